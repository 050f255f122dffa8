//! Fails the build when a released SQL script has been edited: users' databases ran
//! those exact scripts, so a schema change goes into a new
//! `sql/stripe_sync--<old>--<new>.sql` instead. The hashes are in `sql/released.sha256`.

use sha2::{Digest, Sha256};
use std::fs;

fn main() {
    println!("cargo:rerun-if-changed=sql");
    let list = fs::read_to_string("sql/released.sha256").expect("sql/released.sha256 lists the released scripts");
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (want, file) = line.split_once("  ").expect("lines are `<sha256>  <file>`, as sha256sum writes them");
        let path = format!("sql/{file}");
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("released script {path} is missing: {e}"));
        let got: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            got == want,
            "{path} was released and must not change (sha256 {got}, released as {want}). \
             Put schema changes in a new upgrade script sql/stripe_sync--<current>--<next>.sql."
        );
    }
}
