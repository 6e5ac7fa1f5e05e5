//! A few threads that finish read-amplification windows after the reader has been
//! answered. Separate from rayon's pool on purpose: a job blocks on the origin (a registry
//! at 50 MB/s), and rayon's threads must stay free to decode the chunks readers wait on.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs in flight at once: several windows can stream from a remote origin side by side,
/// and a reader's window should rarely queue behind others.
const THREADS: usize = 8;

static POOL: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();

fn start() -> Option<Mutex<Sender<Job>>> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..THREADS {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("warren-fetch-{i}"))
            .spawn(move || worker(&rx));
        match spawned {
            Ok(_) => started += 1,
            Err(e) => tracing::warn!(error = %e, "could not start a background fetch thread"),
        }
    }
    (started > 0).then(|| Mutex::new(tx))
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// Runs `job` on a background thread; on the caller's thread if none could be started
/// (slower for that reader, never lost work: the job finishes the in-flight slots it holds).
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    let job: Job = Box::new(job);
    let job = match POOL.get_or_init(start) {
        Some(tx) => match tx.lock().unwrap_or_else(|p| p.into_inner()).send(job) {
            Ok(()) => return,
            Err(returned) => returned.0,
        },
        None => job,
    };
    job();
}
