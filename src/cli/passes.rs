//! `qrange passes`: the quantize pipeline's pass list, in order, by phase.

use super::Outcome;

/// List the passes `qrange quantize` runs, in order: the step label (`--dump-after` and
/// `--stop-after` take it, or the pass name for every step of that pass) and what the pass
/// does, under the phase each step belongs to.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<Outcome> {
    let mut phase = None;
    for (i, step) in crate::passes::pipeline().iter().enumerate() {
        if phase != Some(step.phase) {
            phase = Some(step.phase);
            println!("{}:", step.phase.describe());
        }
        println!(
            "{:>3}  {:<24} {}",
            i + 1,
            step.label,
            step.pass.description()
        );
    }
    Ok(Outcome::Ok)
}
