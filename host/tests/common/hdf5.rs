//! HDF5 helpers shared by the SHD tests.

use hdf5::{File, H5Type};

/// Writes `data` as dataset `name` (`group/leaf` creates the group).
pub fn put<T: H5Type>(file: &File, name: &str, data: &[T]) {
    let (group, leaf) = match name.rsplit_once('/') {
        Some((g, leaf)) => {
            let group = if file.link_exists(g) {
                file.group(g).unwrap()
            } else {
                file.create_group(g).unwrap()
            };
            (group, leaf)
        }
        None => (file.group("/").unwrap(), name),
    };
    group.new_dataset_builder().with_data(data).create(leaf).unwrap();
}
