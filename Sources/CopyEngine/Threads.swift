import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex with one condition variable. `NSCondition` would do, but the copy path
/// needs nothing else from Foundation. The pthread objects live at stable heap addresses, as
/// POSIX requires (they must never move while in use).
final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Only inside `withLock`: releases the lock, sleeps until `broadcast`, takes it again.
    /// Wakeups may be spurious: callers wait in a loop on their own predicate.
    func wait() { pthread_cond_wait(condition, mutex) }

    func broadcast() { pthread_cond_broadcast(condition) }
}

/// A joinable OS thread. The readers of a copy block in pread for milliseconds at a time; on
/// Swift's cooperative pool that would starve unrelated tasks, so they get threads of their own.
struct JoinableThread {
    private let thread: pthread_t

    private final class Body {
        let run: @Sendable () -> Void
        init(_ run: @escaping @Sendable () -> Void) { self.run = run }
    }

    /// Starts `body` on a new thread, or fails as pthread_create did (EAGAIN: thread limit).
    static func start(_ body: @escaping @Sendable () -> Void) -> Result<JoinableThread, Errno> {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { context in
            Unmanaged<Body>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        if status != 0 {
            Unmanaged<Body>.fromOpaque(context).release()
            return .failure(Errno(rawValue: status))
        }
        return .success(JoinableThread(thread: thread))
    }

    func join() { pthread_join(thread, nil) }
}
