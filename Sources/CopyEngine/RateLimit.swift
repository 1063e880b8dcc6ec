import BlockIO
import Synchronization

/// The time source of a rate limit: monotonic nanoseconds and a way to wait. The engine uses
/// `SystemClock`; tests inject a clock that records the waits and advances virtual time.
public protocol CopyClock: Sendable {
    /// Monotonic nanoseconds.
    func now() -> UInt64
    /// Blocks the calling thread for `nanoseconds`.
    func sleep(nanoseconds: UInt64)
}

/// CLOCK_MONOTONIC and nanosleep(2).
public struct SystemClock: CopyClock {
    public init() {}
    public func now() -> UInt64 { monotonicNanoseconds() }
    public func sleep(nanoseconds: UInt64) { sleepNanoseconds(nanoseconds) }
}

/// A token bucket in its virtual-time form (GCRA): `rate` bytes per second on average, with
/// bursts of at most `burst` bytes after an idle spell. State is one instant, the time at which
/// everything taken so far would have been paid for at exactly `rate`; integer nanoseconds,
/// so the same calls always give the same waits.
public struct TokenBucket: Hashable, Sendable {
    public let bytesPerSecond: UInt64
    public let burst: UInt64
    /// When the bytes taken so far are paid for.
    private var paidUntil: UInt64
    private let burstNanoseconds: UInt64

    public init(bytesPerSecond: UInt64, burst: UInt64, now: UInt64) {
        precondition(bytesPerSecond > 0, "a rate limit of 0 bytes/s would never finish")
        self.bytesPerSecond = bytesPerSecond
        self.burst = burst
        self.paidUntil = now
        self.burstNanoseconds = TokenBucket.nanoseconds(for: burst, at: bytesPerSecond)
    }

    /// How long `bytes` take at `rate`, rounded up to whole nanoseconds.
    static func nanoseconds(for bytes: UInt64, at rate: UInt64) -> UInt64 {
        let product = bytes.multipliedFullWidth(by: 1_000_000_000)
        let (quotient, remainder) = rate.dividingFullWidth(product)
        return remainder == 0 ? quotient : quotient + 1
    }

    /// Takes `bytes` at instant `now` and returns how many nanoseconds the caller must wait
    /// before it uses them (0 while the bucket still holds enough). Idle time refills the
    /// bucket only up to `burst`.
    public mutating func take(_ bytes: UInt64, now: UInt64) -> UInt64 {
        paidUntil = max(paidUntil, now) + TokenBucket.nanoseconds(for: bytes, at: bytesPerSecond)
        let allowedAt = paidUntil > burstNanoseconds ? paidUntil - burstNanoseconds : 0
        return allowedAt > now ? allowedAt - now : 0
    }
}

/// A token bucket shared by the reader threads of one copy; waits sleep (never spin), in slices
/// short enough that a cancel is noticed within `cancelCheckInterval`.
public final class RateLimiter: Sendable {
    private let bucket: Mutex<TokenBucket>
    private let clock: any CopyClock
    static let cancelCheckInterval: UInt64 = 50_000_000

    /// `burst` defaults to the copy's I/O size: one read may start at once after an idle spell.
    public init(bytesPerSecond: UInt64, burst: UInt64, clock: any CopyClock = SystemClock()) {
        self.clock = clock
        self.bucket = Mutex(TokenBucket(bytesPerSecond: bytesPerSecond, burst: burst, now: clock.now()))
    }

    /// Takes `bytes` and sleeps until they are paid for. Returns false, early, when `cancel`
    /// is raised meanwhile.
    @discardableResult
    public func acquire(_ bytes: UInt64, cancel: CancellationFlag? = nil) -> Bool {
        var remaining = bucket.withLock { $0.take(bytes, now: clock.now()) }
        while remaining > 0 {
            if cancel?.isCancelled == true { return false }
            let slice = min(remaining, RateLimiter.cancelCheckInterval)
            clock.sleep(nanoseconds: slice)
            remaining -= slice
        }
        return cancel?.isCancelled != true
    }
}

/// A cooperative cancel: the engine checks it between I/Os and stops with a `CopyError` whose
/// `isCancelled` is true. Safe to raise from any thread or a signal-handling task.
public final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func cancel() { flag.store(true, ordering: .releasing) }
    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
}
