//! Group commit: callers hand their items (a message's job starts or finishes, a
//! dispatcher's submissions) to a batcher, which runs whatever has queued up meanwhile
//! through one function — one transaction — and hands each caller its own answers.
//! A busy fleet then pays a commit per batch instead of per job, and no caller waits
//! longer than the batch in front of it.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

type Request<Req, Resp> = (Vec<Req>, oneshot::Sender<Vec<Resp>>);

/// Runs batches of items through one function; callers await their own answers.
pub struct Batcher<Req, Resp> {
    queue: mpsc::Sender<Request<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Spawns the batching task. `run` answers a batch in order, one answer per item; a
    /// batch holds what queued while the previous one ran, from at most `max` callers
    /// (a caller's items are never split).
    pub fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let max = max.max(1);
        let (queue, mut requests) = mpsc::channel::<Request<Req, Resp>>(max * 4);
        tokio::spawn(async move {
            let mut waiting = Vec::with_capacity(max);
            while requests.recv_many(&mut waiting, max).await > 0 {
                let mut items = Vec::new();
                let mut replies = Vec::with_capacity(waiting.len());
                for (batch, reply) in waiting.drain(..) {
                    replies.push((batch.len(), reply));
                    items.extend(batch);
                }
                let mut answers = run(items).await.into_iter();
                for (n, reply) in replies {
                    // A caller that went away (its worker stopped) needs no answer.
                    let _ = reply.send(answers.by_ref().take(n).collect());
                }
            }
        });
        Self { queue }
    }

    /// Queues items and waits for their answers, in order; `None` only if the batching
    /// task has gone (the process is stopping).
    pub async fn call(&self, items: Vec<Req>) -> Option<Vec<Resp>> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((items, reply)).await.ok()?;
        answer.await.ok()
    }
}

/// Runs a batch through `run` (one transaction); if that fails, each item in a batch of
/// its own, so every item gets its own outcome or error (a deadlock or one bad row does
/// not fail the others).
pub async fn all_or_each<Job, T, F, Fut>(jobs: Vec<Job>, run: F) -> Vec<Result<T, sqlx::Error>>
where
    Job: Clone,
    F: Fn(Arc<[Job]>) -> Fut,
    Fut: Future<Output = Result<Vec<T>, sqlx::Error>>,
{
    let jobs: Arc<[Job]> = jobs.into();
    if let Ok(all) = run(Arc::clone(&jobs)).await {
        return all.into_iter().map(Ok).collect();
    }
    let mut each = Vec::with_capacity(jobs.len());
    for job in jobs.iter() {
        each.push(
            run(Arc::from([job.clone()]))
                .await
                .and_then(|mut one| one.pop().ok_or(sqlx::Error::RowNotFound)),
        );
    }
    each
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_caller_gets_its_own_answers_and_requests_are_grouped() {
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
            // Callers with one, two or three items each.
            let items: Vec<u32> = (0..=(i % 3)).map(|k| i * 100 + k).collect();
            tokio::spawn(async move { (items.clone(), batcher.call(items).await) })
        });
        for call in calls.collect::<Vec<_>>() {
            let (items, answer) = call.await.expect("no panic");
            let expected: Vec<u32> = items.iter().map(|i| i * 10).collect();
            assert_eq!(answer, Some(expected));
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 64, "64 concurrent calls ran as {n} batches");
        assert!(n >= 4, "batches hold 16 callers at most: {n}");
    }
}
