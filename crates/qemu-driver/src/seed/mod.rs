//! Cloud-init NoCloud seed ISO (being written).
