import Foundation
import Synchronization

/// Keeps this process's memory resident while it holds devices suspended, as LVM does
/// (`activation/use_mlockall`): a page fault that has to read a page back — of this binary, a
/// library, or anonymous memory from swap — from a device that is suspended waits for its
/// resume, which only this process would issue. Locking happens before the first suspend, so
/// its cost (faulting in every mapped page once) stays out of the freeze window.
enum MemoryLock {
    /// Nested holders: only the outermost locks and unlocks.
    private static let depth = Mutex(0)

    /// Runs `body` with the process's current and future pages locked in memory. A failure to
    /// lock (no CAP_IPC_LOCK, RLIMIT_MEMLOCK) does not stop the suspend: the kernel may then
    /// have to page, as it would without this.
    static func whileSuspending<T>(_ body: () throws -> T) rethrows -> T {
        let outermost = depth.withLock { depth -> Bool in
            depth += 1
            return depth == 1
        }
        if outermost { _ = mlockall(MCL_CURRENT | MCL_FUTURE) }
        defer {
            let last = depth.withLock { depth -> Bool in
                depth -= 1
                return depth == 0
            }
            if last { _ = munlockall() }
        }
        return try body()
    }
}
