//! Test rig (being written).
