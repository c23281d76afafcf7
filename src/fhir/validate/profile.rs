//! Validation against the StructureDefinitions of a conformance package.
