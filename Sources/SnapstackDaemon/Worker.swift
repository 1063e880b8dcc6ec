import Dispatch
import Synchronization

/// Runs the daemon's blocking work — libdm calls, the state lock, the database — one operation
/// at a time on a thread of its own, so that none of it occupies the cooperative pool that the
/// event loop, the signal handlers and the watchdog run on. An operation that has started is
/// never interrupted: a shutdown waits for it, so that no device is left half-changed.
final class Worker: Sendable {
    private let queue = DispatchQueue(label: "snapstack.daemon.worker")
    private let started = Mutex<ContinuousClock.Instant?>(nil)

    func perform<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                self.started.withLock { $0 = .now }
                let result = Result { try body() }
                self.started.withLock { $0 = nil }
                continuation.resume(with: result)
            }
        }
    }

    /// How long the operation now running has run, nil when idle.
    func busyFor() -> Duration? {
        started.withLock { $0.map { ContinuousClock.now - $0 } }
    }
}
