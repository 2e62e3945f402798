//! The firewall backend: our nftables table and its grant sets (see the server issue).
