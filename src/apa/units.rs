//! Measurements of the physical-condition assessments (next commit).
