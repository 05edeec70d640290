//! Progress of long work (image builds, first starts): a spinner with the
//! elapsed time on a terminal, plain lines otherwise (CI logs, pipes), so a
//! minute-long build never looks like a hang and never fills a log with
//! control characters.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Progress {
    step: Arc<Mutex<String>>,
    started: Instant,
    done: Arc<AtomicBool>,
    spinner: Option<JoinHandle<()>>,
}

impl Progress {
    /// Begins a step: a spinner on a terminal (stderr), else one line `step ...`.
    pub fn start(step: &str) -> Progress {
        Self::start_on(step, std::io::stderr().is_terminal())
    }

    fn start_on(step: &str, terminal: bool) -> Progress {
        let shared = Arc::new(Mutex::new(step.to_string()));
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let spinner = if terminal {
            let (shared, done) = (shared.clone(), done.clone());
            Some(std::thread::spawn(move || spin(&shared, &done, started)))
        } else {
            eprintln!("{step} ...");
            None
        };
        Progress {
            step: shared,
            started,
            done,
            spinner,
        }
    }

    /// Changes what the step says it is doing (a new line when not on a terminal).
    pub fn update(&self, step: &str) {
        *self.step.lock().unwrap() = step.to_string();
        if self.spinner.is_none() {
            eprintln!("{step} ...");
        }
    }

    /// Ends the step with `outcome` and the time it took.
    pub fn finish(mut self, outcome: &str) {
        self.stop();
        eprintln!("{outcome} ({:.1}s)", self.started.elapsed().as_secs_f64());
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(spinner) = self.spinner.take() {
            let _ = spinner.join();
            eprint!("\r\x1b[2K"); // clear the spinner's line
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spin(step: &Mutex<String>, done: &AtomicBool, started: Instant) {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut frame = 0;
    while !done.load(Ordering::SeqCst) {
        let text = step.lock().unwrap().clone();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} {text} {}s",
            FRAMES[frame % FRAMES.len()],
            started.elapsed().as_secs()
        );
        let _ = err.flush();
        drop(err);
        frame += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}
