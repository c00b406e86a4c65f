//! Golden tests of the command line's errors: each case in `tests/cmd/*.toml` runs `pot` in a
//! scratch copy of `tests/cmd/fixtures.in` (bad, truncated and missing inputs) and pins its
//! exit code and its whole output, so an error's wording (the input it names, the fix it
//! gives) changes only on purpose. After a deliberate change, `TRYCMD=overwrite cargo test
//! --test cli_errors` rewrites the cases; review the diff.

#[test]
fn cli_errors_name_the_input_and_the_fix() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
