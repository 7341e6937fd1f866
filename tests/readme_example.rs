//! The README's embedding example is `examples/quickstart.rs`, so the code it shows compiles and runs: the first
//! ```rust block of README.md, trimmed, must appear verbatim in the trimmed example (its imports and `main`).

const README: &str = include_str!("../README.md");
const QUICKSTART: &str = include_str!("../examples/quickstart.rs");

/// The first ```rust fenced block of `markdown`, without its fences.
fn first_rust_block(markdown: &str) -> Option<&str> {
    let start = markdown.find("```rust\n")? + "```rust\n".len();
    let end = start + markdown[start..].find("\n```")?;
    Some(&markdown[start..end])
}

#[test]
fn the_readme_shows_the_quickstart_verbatim() {
    let block = first_rust_block(README)
        .expect("README.md has a ```rust block")
        .trim();
    assert!(
        block.contains("fn main"),
        "README.md's first ```rust block should be the quickstart's `main`:\n{block}"
    );
    assert!(
        QUICKSTART.trim().contains(block),
        "README.md's first ```rust block is not verbatim in examples/quickstart.rs\n\
         --- README.md block ---\n{block}\n--- examples/quickstart.rs ---\n{}",
        QUICKSTART.trim()
    );
}
