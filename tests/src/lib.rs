//! spa end-to-end tests live here (network namespaces); see the lab issue.
#![forbid(unsafe_code)]
