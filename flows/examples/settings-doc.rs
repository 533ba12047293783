//! Writes `docs/settings.md` from the settings' declarations:
//! `cargo run -q -p flows --example settings-doc > docs/settings.md`.
//! `scripts/check-docs.sh` (CI) fails when the committed file differs
//! from what this prints.

fn main() {
    print!("{}", flows::settings::markdown());
}
