//! The local drive: node tree and metadata in SQLite, content in backing files, dirty ranges.
