//! Natural batching of the hot lease statements.
//!
//! Most of PostgreSQL's work for a short guarded write is paid once per
//! statement, whatever its row count: executor start and finish, the plan
//! cache, the CHECK expressions, the commit. So each hot kind of write
//! (a submission with its binding, a lease starting, a lease ending, a
//! worker changing state) has one statement over arrays, and one task per kind feeds it: while a batch is
//! being committed, the calls that arrive queue up, and the next batch takes
//! all of them. Under light load a batch is one call and waits for nothing;
//! under heavy load the batches grow by themselves. A call returns only after
//! the commit of its batch, so nothing is acknowledged before it is durable.
//!
//! Each row of a batch keeps its own outcome: the statements check their
//! guards row by row and return the rows they changed. An error that fails
//! the whole statement (a uniqueness rule broken by one row, say) does not
//! fail its neighbours: the batch is then run again one call at a time, and
//! each call gets the error or result it would have had alone. A batch
//! whose outcome is unknown (its connection dropped after it was sent) is
//! never run again here: each call gets [`DbError::UnknownOutcome`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::{DatabaseOperation, Db, DbError};

/// The most calls one statement carries.
const MAX_BATCH: usize = 64;

/// A call that can share a statement with others of its kind.
pub(crate) trait Batched: Send + Sync + Sized + 'static {
    type Output: Send + 'static;
    const OP: DatabaseOperation;

    /// Calls with the same key never share a batch (a statement may change
    /// a row only once); the later one waits for the next batch. `None`
    /// shares with anything.
    fn key(&self) -> Option<u128>;

    /// Runs `batch` as one statement: one outcome per call, in order, or an
    /// error that failed the whole statement.
    fn run<'a>(
        db: &'a Db,
        batch: &'a [Self],
    ) -> impl Future<Output = Result<Vec<Result<Self::Output, DbError>>, DbError>> + Send + 'a;
}

type Job<T> = (T, oneshot::Sender<Result<<T as Batched>::Output, DbError>>);

/// The queue in front of one kind of statement.
pub(crate) struct Batcher<T: Batched> {
    queue: mpsc::UnboundedSender<Job<T>>,
    counts: Arc<Counts>,
}

/// How many calls a batch writer took and how many statements it ran for
/// them.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) calls: AtomicU64,
    pub(crate) statements: AtomicU64,
}

impl<T: Batched> Batcher<T> {
    /// Starts the task that runs the batches on the current runtime. It
    /// stops when the last handle on the batcher is dropped.
    pub(crate) fn start(db: Db) -> Batcher<T> {
        let (queue, jobs) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(feed(db, jobs, counts.clone()));
        Batcher { queue, counts }
    }

    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    pub(crate) async fn call(&self, item: T) -> Result<T::Output, DbError> {
        let stopped = || DbError::Unavailable { op: T::OP.as_str(), cause: "the batch writer has stopped".into() };
        let (reply, outcome) = oneshot::channel();
        self.queue.send((item, reply)).map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// Each call's outcome from the rows a batch statement changed, matched by
/// `key`: the call's row, or a conflict saying `refused` (its guards did not
/// hold). A batch holds a key at most once.
pub(crate) fn by_key<T: Batched, K: Eq + std::hash::Hash, V>(
    batch: &[T],
    changed: Vec<(K, V)>,
    key: impl Fn(&T) -> K,
    refused: impl Fn(&T) -> String,
) -> Vec<Result<V, DbError>> {
    let mut changed: std::collections::HashMap<K, V> = changed.into_iter().collect();
    batch.iter().map(|item| changed.remove(&key(item)).ok_or_else(|| DbError::conflict(T::OP, refused(item)))).collect()
}

/// Runs one call alone, as a batch of one.
pub(crate) async fn run_one<T: Batched>(db: &Db, item: &T) -> Result<T::Output, DbError> {
    let mut outcomes = T::run(db, std::slice::from_ref(item)).await?;
    outcomes.pop().unwrap_or_else(|| Err(DbError::internal(T::OP, "a batch of one gave no outcome")))
}

async fn feed<T: Batched>(db: Db, mut jobs: mpsc::UnboundedReceiver<Job<T>>, counts: Arc<Counts>) {
    let mut waiting: VecDeque<Job<T>> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while waiting.len() < 4 * MAX_BATCH
            && let Ok(job) = jobs.try_recv()
        {
            waiting.push_back(job);
        }
        let batch = take_batch(&mut waiting);
        let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        counts.calls.fetch_add(items.len() as u64, Ordering::Relaxed);
        counts.statements.fetch_add(1, Ordering::Relaxed);
        let outcomes = match T::run(&db, &items).await {
            Ok(outcomes) => outcomes,
            Err(err) if items.len() == 1 => vec![Err(err)],
            // The statement may have committed: running its calls again
            // could apply them twice. Each caller settles it (a submission
            // reads its row back by its token).
            Err(DbError::UnknownOutcome { op, cause }) => {
                items.iter().map(|_| Err(DbError::UnknownOutcome { op, cause: cause.clone() })).collect()
            }
            Err(err) => {
                tracing::debug!(op = T::OP.as_str(), size = items.len(), cause = %err, "batch failed; running its calls one by one");
                let mut outcomes = Vec::with_capacity(items.len());
                for item in &items {
                    counts.statements.fetch_add(1, Ordering::Relaxed);
                    outcomes.push(run_one(&db, item).await);
                }
                outcomes
            }
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // A caller that went away no longer needs its outcome.
            let _ = reply.send(outcome);
        }
    }
}

/// Takes up to [`MAX_BATCH`] calls in arrival order, leaving behind (in
/// order) any whose key is already in the batch.
fn take_batch<T: Batched>(waiting: &mut VecDeque<Job<T>>) -> Vec<Job<T>> {
    let mut batch: Vec<Job<T>> = Vec::with_capacity(waiting.len().min(MAX_BATCH));
    let mut left = VecDeque::new();
    while let Some(job) = waiting.pop_front() {
        if batch.len() == MAX_BATCH {
            left.push_back(job);
            left.extend(waiting.drain(..));
            break;
        }
        let key = job.0.key();
        if key.is_some() && batch.iter().any(|(other, _)| other.key() == key) {
            left.push_back(job);
        } else {
            batch.push(job);
        }
    }
    *waiting = left;
    batch
}

/// A statement's parameters, owned so that a retry can send them again
/// (a batch statement's: one array per column).
pub(crate) type Columns = Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>;

/// Runs a statement (prepared once per connection) with `columns`: the
/// batch statements, and `Db::change_request`'s single-row changes.
pub(crate) async fn query(
    db: &Db,
    op: DatabaseOperation,
    sql: &'static str,
    columns: Columns,
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let columns = std::sync::Arc::new(columns);
    db.run(op, move |client| {
        let columns = columns.clone();
        Box::pin(async move {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                columns.iter().map(|c| c.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query(&stmt, &params).await?)
        })
    })
    .await
}
