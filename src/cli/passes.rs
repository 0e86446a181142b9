//! `qrange passes`: the pass pipeline, in order.

use super::Outcome;

/// List the passes of the pipeline in the order they run.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<Outcome> {
    let passes = crate::passes::registry();
    if passes.is_empty() {
        println!("no passes");
    }
    for p in passes {
        println!("{:<24} {}", p.name(), p.description());
    }
    Ok(Outcome::Ok)
}
