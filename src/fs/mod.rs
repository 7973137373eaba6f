//! The FUSE adapter: translates kernel requests into drive calls and drive errors into errnos.
