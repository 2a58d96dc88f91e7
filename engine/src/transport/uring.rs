//! The io_uring path (being written).
