//! The built-in synthetic SHD-shaped dataset (placeholder: being written).
