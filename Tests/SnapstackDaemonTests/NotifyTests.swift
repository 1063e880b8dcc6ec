import Foundation
import ServiceLifecycleTestKit
import Testing
@testable import SnapstackDaemon

#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for the service manager (or the journal).
private final class Receiver {
    let fd: Int32

    /// Binds `name`: a path, or an abstract name when it starts with `@`.
    init(_ name: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 } else { unlink(name) }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + (abstract ? [] : [0])) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        let result = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard fd >= 0, result == 0 else { throw POSIXError(.EADDRINUSE) }
    }

    deinit { close(fd) }

    func receive() -> [UInt8]? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 2000) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count < 0 ? nil : Array(buffer.prefix(count))
    }
}

@Suite struct NotifyTests {
    @Test func readyReachesAPathSocket() throws {
        let path = NSTemporaryDirectory() + "snapstack-notify-\(getpid()).sock"
        let receiver = try Receiver(path)
        defer { unlink(path) }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": path])
        notifier.ready(status: "watching\nfor disks")
        #expect(receiver.receive().map { String(decoding: $0, as: UTF8.self) } == "READY=1\nSTATUS=watching for disks")
    }

    @Test func abstractSocketsAreNamedWithAnAt() throws {
        let name = "@snapstack-test-\(getpid())"
        let receiver = try Receiver(name)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": name]).notify([("WATCHDOG", "1")]))
        #expect(receiver.receive().map { String(decoding: $0, as: UTF8.self) } == "WATCHDOG=1")
    }

    @Test func withoutAManagerNothingIsSent() {
        #expect(!SystemdNotifier(environment: [:]).notify([("READY", "1")]))
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "vsock:2:1234"]).notify([("READY", "1")]))
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/notify"]).notify([("READY", "1")]))
    }

    @Test func watchdogIntervalIsHalfOfWhatTheManagerAsks() {
        let worker = Worker()
        let logger = DaemonLogging.makeLogger(level: .critical, environment: [:])
        let notifier = SystemdNotifier(environment: [:])
        func interval(_ environment: [String: String]) -> Duration? {
            WatchdogService(notifier: notifier, worker: worker, stuckAfter: .seconds(60), logger: logger, environment: environment).interval
        }
        #expect(interval(["WATCHDOG_USEC": "30000000"]) == .seconds(15))
        #expect(interval(["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "\(getpid())"]) == .seconds(15))
        #expect(interval(["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"]) == nil)
        #expect(interval([:]) == nil)
        #expect(interval(["WATCHDOG_USEC": "0"]) == nil)
    }

    @Test("a graceful shutdown ends the watchdog between two pings, not at the next one")
    func watchdogStopsAtShutdown() async throws {
        let logger = DaemonLogging.makeLogger(level: .critical, environment: [:])
        // A ping every 5 minutes: the stop must not wait for the next.
        let watchdog = WatchdogService(notifier: SystemdNotifier(environment: [:]), worker: Worker(), stuckAfter: .seconds(60),
                                       logger: logger, environment: ["WATCHDOG_USEC": "600000000"])
        let clock = ContinuousClock()
        let started = clock.now
        try await testGracefulShutdown { trigger in
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await watchdog.run() }
                try await Task.sleep(for: .milliseconds(100))
                trigger.triggerGracefulShutdown()
                try await group.waitForAll()
            }
        }
        #expect(clock.now - started < .seconds(60))
    }
}

@Suite struct JournalTests {
    @Test func fieldsUseTheBinaryForm() {
        let payload = JournalLogHandler.encode([("MESSAGE", "two\nlines"), ("PRIORITY", "6")])
        var expected = Array("MESSAGE\n".utf8) + [9, 0, 0, 0, 0, 0, 0, 0] + Array("two\nlines\n".utf8)
        expected += Array("PRIORITY\n".utf8) + [1, 0, 0, 0, 0, 0, 0, 0] + Array("6\n".utf8)
        #expect(payload == expected)
    }

    @Test func metadataKeysBecomeFieldNames() {
        #expect(JournalLogHandler.fieldName("device") == "SNAPSTACK_DEVICE")
        #expect(JournalLogHandler.fieldName("sl-service") == "SNAPSTACK_SL_SERVICE")
        #expect(JournalLogHandler.fieldName(String(repeating: "x", count: 80)).count == 64)
        #expect(JournalLogHandler.priority(.error) == 3 && JournalLogHandler.priority(.debug) == 7)
    }

    @Test func stderrIsTheJournalOnlyWhenJournalStreamNamesIt() {
        var st = stat()
        fstat(2, &st)
        #expect(DaemonLogging.stderrIsJournal(["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"]))
        #expect(!DaemonLogging.stderrIsJournal(["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino &+ 1)"]))
        #expect(!DaemonLogging.stderrIsJournal([:]))
    }
}
