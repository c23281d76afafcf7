//! Search: the parameter registry, what resources are indexed under
//! (extraction) and what clients ask for (parsing).

pub mod extract;
pub mod model;
pub mod parse;
pub mod registry;
pub mod values;
