#![cfg_attr(not(test), no_std)]
//! spiketile-core (being written).
