import Foundation
import SnapstackErrors
import SystemPackage
import Testing
@testable import SnapstackDaemon

#if canImport(Glibc)
import Glibc
#endif

/// The lock a daemon holds for its whole run: what a shutdown's blkdeactivate waits on, and
/// what keeps a second daemon off the same state.
@Suite struct LifetimeLockTests {
    private let options = DaemonOptions(
        stateDirectory: FilePath(FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-lifetime-\(UUID().uuidString)/state").path),
        configPath: "/nonexistent", lockTimeout: 0.2)

    @Test("the first daemon creates its state directory (0700) and holds daemon.lock; a second waits, then names the holder; once the first is gone, the next takes it")
    func oneDaemonPerState() throws {
        var status = stat()
        let path = options.stateDirectory.appending(Daemon.lifetimeLockName).string
        var fd: Int32 = -1
        defer { if fd >= 0 { close(fd) } }
        // The first daemon, for as long as this block runs.
        do {
            let first = try Daemon.lifetimeLock(options)
            #expect(stat(options.stateDirectory.string, &status) == 0)
            #expect(status.st_mode & 0o777 == 0o700)

            // flock(1) --shared --nonblock on the same file, as the barrier unit takes it: refused.
            fd = open(path, O_RDONLY | O_CLOEXEC)
            #expect(fd >= 0)
            #expect(flock(fd, LOCK_SH | LOCK_NB) != 0)

            do {
                _ = try Daemon.lifetimeLock(options)
                Issue.record("a second daemon took the lock of a running one")
            } catch let error as SnapstackError {
                #expect(error.kind == .locked)
                #expect(error.what.contains("another snapstack daemon"))
                #expect(error.why?.contains("pid \(getpid())") == true)
                #expect(error.remedy?.contains("systemctl stop snapstack.service") == true)
            }

            withExtendedLifetime(first) {}
        }
        // The first one's lock went with it, as a daemon's goes when it exits.
        #expect(flock(fd, LOCK_SH | LOCK_NB) == 0)
        flock(fd, LOCK_UN)
        _ = try Daemon.lifetimeLock(options)
    }
}
