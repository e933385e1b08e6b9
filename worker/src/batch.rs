//! Group commit for the worker's Postgres writes: jobs in flight hand their start and
//! finish records to a batcher, which writes whatever has queued up meanwhile in one
//! transaction. A tenant's usage row (PROCESSING_JOBS slots, storage) is then locked
//! and committed once per batch instead of once per job — with one tenant's jobs in
//! flight, those row locks are what serialises the workers.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Request<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Runs batches of requests through one function; callers await their own answer.
pub struct Batcher<Req, Resp> {
    queue: mpsc::Sender<Request<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Spawns the batching task. `run` answers a batch in order, one answer per
    /// request; a batch holds what queued while the previous one ran, at most `max`.
    pub fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let max = max.max(1);
        let (queue, mut requests) = mpsc::channel::<Request<Req, Resp>>(max * 4);
        tokio::spawn(async move {
            while let Some(first) = requests.recv().await {
                let mut batch = vec![first];
                while batch.len() < max {
                    match requests.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
                let answers = run(items).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller that went away (its worker stopped) needs no answer.
                    let _ = reply.send(answer);
                }
            }
        });
        Self { queue }
    }

    /// Queues one request and waits for its answer; `None` only if the batching task
    /// has gone (the process is stopping).
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answer_and_requests_are_grouped() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let batcher = Arc::new(Batcher::spawn(16, move |items: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                // Slow enough that the other callers queue up behind the first batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                items.into_iter().map(|i| i * 10).collect::<Vec<_>>()
            }
        }));
        let calls = (0..64u32).map(|i| {
            let batcher = Arc::clone(&batcher);
            tokio::spawn(async move { (i, batcher.call(i).await) })
        });
        for call in calls.collect::<Vec<_>>() {
            let (i, answer) = call.await.expect("no panic");
            assert_eq!(answer, Some(i * 10));
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 64, "64 concurrent calls ran as {n} batches");
        assert!(n >= 4, "batches hold at most 16: {n}");
    }
}
