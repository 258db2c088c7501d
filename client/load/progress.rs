//! A progress bar on stderr while a phase runs, only on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::engine::Group;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Groups from this one on belong to the current phase.
    first_group: usize,
}

impl Progress {
    /// A bar if stderr is a terminal and `quiet` is not set.
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let style = ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()).with_style(style)
        });
        Progress {
            bar,
            first_group: 0,
        }
    }

    /// Starts counting the groups added from now on, under `name`.
    pub fn phase(&mut self, name: &'static str, first_group: usize) {
        self.first_group = first_group;
        if let Some(bar) = &self.bar {
            // Emptied first, so no redraw mixes two phases' figures.
            bar.set_position(0);
            bar.set_length(0);
            bar.set_message("");
            bar.set_prefix(name);
            bar.reset_elapsed();
        }
    }

    pub fn update(&self, groups: &[Group], connecting: usize) {
        let Some(bar) = &self.bar else {
            return;
        };
        let phase = groups.get(self.first_group..).unwrap_or_default();
        let count: usize = phase.iter().map(|g| g.count).sum();
        let (mut done, mut failed, mut holding, mut requests) = (0, 0, 0, 0);
        for g in phase {
            done += g.stats.done;
            failed += g.stats.failed;
            holding += g.stats.holding;
            requests += g.stats.request.count();
        }
        bar.set_length(count as u64);
        bar.set_position(done + failed);
        let mut msg = format!("ok {done} failed {failed}");
        if connecting > 0 {
            msg += &format!(" connecting {connecting}");
        }
        if holding > 0 {
            msg += &format!(" holding {holding}");
        }
        if requests > 0 {
            msg += &format!(" requests {requests}");
        }
        bar.set_message(msg);
    }

    /// Prints a line without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
