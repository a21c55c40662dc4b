//! Metadata sources tried in order under one deadline: MMDS, kernel command line, CPIO device.
