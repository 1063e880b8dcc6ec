import BlockIO
import Foundation
import Synchronization

/// Keeps this process's memory resident while it holds devices suspended, as LVM does
/// (`activation/use_mlockall`): a page fault that has to read a page back — of this binary, a
/// library, or anonymous memory from swap — from a device that is suspended waits for its
/// resume, which only this process would issue. Locking happens before the first suspend, so
/// its cost stays out of the freeze window.
///
/// That cost is faulting in every page of every mapping once: little when they are in the page
/// cache already, but seconds per command in the VM lab, whose binaries come over 9p (a
/// three-device set there: 2.9-4.0 s without the lock, 4.3-4.7 s with it, 13 s cold). So memory is locked only when a suspended device may
/// be one a page fault reads from: one under the file systems of the mapped files or under a
/// swap area (`BlockTopology.pagingDevices`), or when that cannot be told.
enum MemoryLock {
    /// Whether memory is locked: a nested holder whose outer one locked already does nothing.
    private static let locked = Mutex(false)

    /// Runs `body` with the process's current and future pages locked in memory when a page
    /// fault could wait for one of `names`. A failure to lock (no CAP_IPC_LOCK, RLIMIT_MEMLOCK)
    /// does not stop the suspend: the kernel may then have to page, as it would without this.
    static func whileSuspending<T>(_ names: [DMName], _ body: () throws -> T) rethrows -> T {
        let lockedHere = mayFaultOn(names) && locked.withLock { locked in
            defer { locked = true }
            return !locked
        }
        if lockedHere { _ = mlockall(MCL_CURRENT | MCL_FUTURE) }
        defer {
            if lockedHere {
                _ = munlockall()
                locked.withLock { $0 = false }
            }
        }
        return try body()
    }

    /// Whether a page fault of this process may wait for one of `names` while it is suspended.
    static func mayFaultOn(_ names: [DMName]) -> Bool {
        guard case .success(let paging) = BlockTopology.pagingDevices() else { return true }
        for name in names {
            var status = stat()
            guard stat(name.devicePath, &status) == 0 else { return true }
            if paging.contains(DeviceNumber(status.st_rdev)) { return true }
        }
        return false
    }
}
