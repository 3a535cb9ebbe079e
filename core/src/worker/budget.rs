//! The output budget of one running attempt: how many bytes of chunks the
//! handler may have queued that Redis has not acknowledged yet. A
//! handler's [`TaskContext::send`](super::TaskContext::send) waits while
//! the budget is spent, so a handler that produces faster than Redis
//! takes (Redis slow, frozen or unreachable) is slowed down instead of
//! filling the worker's memory; the writer gives bytes back as Redis
//! acknowledges chunks (or drops them when the attempt stops).

use std::sync::Arc;

use tokio::sync::Semaphore;

/// What a chunk costs beyond its bytes (its vector, its place in the
/// queues): a stream of tiny tokens is bounded too.
const CHUNK_OVERHEAD: usize = 64;

/// Bytes of queued output one attempt may hold by default (4 MiB).
pub const DEFAULT_MAX_BUFFERED_OUTPUT_BYTES: usize = 4 << 20;

/// Shared by an attempt's handler (which spends) and its chunk writer
/// (which gives back).
#[derive(Clone, Debug)]
pub(crate) struct OutputBudget {
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl OutputBudget {
    /// A budget of `capacity` bytes (at least one chunk's overhead).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(CHUNK_OVERHEAD, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// What a chunk of `len` bytes costs: never more than the whole budget,
    /// so a chunk bigger than the budget still goes (alone).
    pub(crate) fn cost(&self, len: usize) -> usize {
        len.saturating_add(CHUNK_OVERHEAD).min(self.capacity)
    }

    /// Waits until a chunk of `len` bytes fits, then spends its cost.
    /// Cancel-safe: dropped while waiting, it spends nothing.
    pub(crate) async fn spend(&self, len: usize) {
        let cost = u32::try_from(self.cost(len)).unwrap_or(u32::MAX);
        // The semaphore is never closed: acquiring only waits.
        if let Ok(permit) = self.permits.acquire_many(cost).await {
            permit.forget();
        }
    }

    /// Gives back the cost of chunks of these lengths.
    pub(crate) fn give_back(&self, lens: impl IntoIterator<Item = usize>) {
        let total: usize = lens.into_iter().map(|len| self.cost(len)).sum();
        if total > 0 {
            self.permits.add_permits(total);
        }
    }

    /// Bytes spent and not given back.
    pub(crate) fn in_use(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    /// The budget in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn spending_waits_until_bytes_are_given_back() {
        let budget = OutputBudget::new(1000);
        budget.spend(800).await;
        assert_eq!(budget.in_use(), 864);
        let waiting = tokio::time::timeout(Duration::from_millis(50), budget.spend(100)).await;
        assert!(waiting.is_err(), "a chunk over the budget must wait");
        assert_eq!(budget.in_use(), 864, "a cancelled wait spends nothing");
        budget.give_back([800]);
        tokio::time::timeout(Duration::from_secs(5), budget.spend(100))
            .await
            .expect("fits once given back");
        assert_eq!(budget.in_use(), 164);
    }

    #[tokio::test]
    async fn a_chunk_bigger_than_the_budget_still_goes_alone() {
        let budget = OutputBudget::new(100);
        tokio::time::timeout(Duration::from_secs(5), budget.spend(10_000))
            .await
            .expect("a huge chunk is not blocked forever");
        assert_eq!(budget.in_use(), 100);
        budget.give_back([10_000]);
        assert_eq!(budget.in_use(), 0);
    }
}
