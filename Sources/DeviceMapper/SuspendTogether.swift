import CDeviceMapper
import CShims
import Foundation
import SystemPackage

extension DeviceMapperClient {
    /// Sends every message of `messages` at the same time, each from a thread of its own
    /// (`DM_TARGET_MSG` on `/dev/mapper/control`, without libdm, whose tasks must run one at a
    /// time), and returns once all are answered. An era `checkpoint` waits for a metadata
    /// commit, so N of them one after another cost N commits; at the same time they cost about
    /// one. Throws the first failure after all have been tried.
    public func messageTogether(_ messages: [(device: DMName, text: String)]) throws {
        guard !messages.isEmpty else { return }
        let descriptor = try Self.openControl(operation: "message")
        defer { try? descriptor.close() }
        let control = RawControl(fd: descriptor.rawValue)
        let crew = Crew(count: messages.count)
        defer { crew.finish() }
        let failures = crew.run(messages.map { device, text in { control.message(device, text) } })
        if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
    }

    /// Suspends every device of `names` at the same time, each from a thread of its own, runs
    /// `body` once all of them are suspended, then resumes all of them at the same time.
    ///
    /// A suspend waits for in-flight I/O and an SRCU grace period, a resume that swaps tables
    /// for two more grace periods; one after another (`withSuspended`) a set of N devices is
    /// frozen N times as long as one device. Side by side, the waits overlap. The suspends and
    /// resumes go to `/dev/mapper/control` directly (`DM_DEV_SUSPEND`), not through libdm,
    /// whose tasks must run one at a time. The threads are started before the first suspend.
    ///
    /// The guarantee is `withSuspended`'s: every device this call suspended is resumed before
    /// it returns — after `body`, when `body` throws and when another device's suspend failed;
    /// a failed resume is retried once and reported. A resume swaps in the device's inactive
    /// table if one is loaded, and carries the udev flags a libdm resume without udev
    /// synchronisation carries (udev sees a genuine change of an existing device; nothing waits
    /// for it, as these devices' nodes exist already).
    ///
    /// Returns `body`'s value and the freeze window: from the first suspend issued to the
    /// return of the last resume.
    public func withSuspendedTogether<T>(_ names: [DMName], options: SuspendOptions = [],
                                         _ body: () throws -> T) throws -> (value: T, window: Duration) {
        guard !names.isEmpty else { return (try body(), .zero) }
        return try MemoryLock.whileSuspending(names) { try withSuspendedTogetherUnlocked(names, options: options, body) }
    }

    private func withSuspendedTogetherUnlocked<T>(_ names: [DMName], options: SuspendOptions,
                                                  _ body: () throws -> T) throws -> (value: T, window: Duration) {
        let descriptor = try Self.openControl(operation: "suspend")
        defer { try? descriptor.close() }
        let control = RawControl(fd: descriptor.rawValue)
        let crew = Crew(count: names.count)
        defer { crew.finish() }

        let clock = ContinuousClock()
        let started = clock.now
        let suspendFailures = crew.run(names.map { name in { control.suspend(name, options: options) } })
        let suspended = names.indices.filter { suspendFailures[$0] == nil }.map { names[$0] }

        func resumeAll() -> [String] {
            let failures = crew.run(suspended.map { name in {
                if control.resume(name) == nil { return nil }
                return control.resume(name)
            } })
            return failures.compactMap { $0.map { "\($0)" } }
        }

        let value = try ResumeGuarantee.run({
            if let failure = suspendFailures.lazy.compactMap({ $0 }).first { throw failure }
            return try body()
        }, resumingWith: resumeAll)
        let window = clock.now - started
        return (value, window)
    }
}

extension DeviceMapperClient {
    fileprivate static func openControl(operation: String) throws -> FileDescriptor {
        do {
            return try FileDescriptor.open("/dev/mapper/control", .readWrite, options: [.closeOnExec])
        } catch {
            throw DeviceMapperError(kind: .driverUnavailable, operation: operation, errno: error as? Errno,
                                    messages: ["cannot open /dev/mapper/control"])
        }
    }
}

/// `DM_DEV_SUSPEND` and `DM_TARGET_MSG` on an open `/dev/mapper/control`, safe on many threads.
private struct RawControl: Sendable {
    let fd: Int32

    /// What libdm sends with a resume when it does not synchronise with udev: its own
    /// "primary source" flag with a cookie of zero, which `dmsetup udevcomplete` ignores.
    static let resumeEvent = UInt32(DM_UDEV_PRIMARY_SOURCE_FLAG) << UInt32(DM_UDEV_FLAGS_SHIFT)

    func suspend(_ name: DMName, options: SuspendOptions) -> DeviceMapperError? {
        retryingInterrupts("suspend", name) {
            snapstack_dm_suspend(fd, name.rawValue, 1, options.contains(.noLockFS) ? 1 : 0,
                                 options.contains(.noFlush) ? 1 : 0, 0)
        }
    }

    func resume(_ name: DMName) -> DeviceMapperError? {
        retryingInterrupts("resume", name) { snapstack_dm_suspend(fd, name.rawValue, 0, 0, 0, Self.resumeEvent) }
    }

    func message(_ name: DMName, _ text: String) -> DeviceMapperError? {
        retryingInterrupts("message", name) { snapstack_dm_message(fd, name.rawValue, 0, text) }
    }

    /// A suspend interrupted by a signal is undone by the kernel (EINTR), so it is asked again.
    private func retryingInterrupts(_ operation: String, _ name: DMName, _ call: () -> Int32) -> DeviceMapperError? {
        while true {
            if call() == 0 { return nil }
            let code = Errno(rawValue: errno)
            if code == .interrupted { continue }
            return DeviceMapperError(kind: code == .noSuchAddressOrDevice ? .noSuchDevice : .failed,
                                     operation: operation, device: name.rawValue, errno: code)
        }
    }
}

/// A fixed set of threads, one per device, that run one job each at a time: a blocking ioctl
/// holds its thread, so the jobs must not share threads (a dispatch queue's width follows the
/// number of CPUs, not of devices).
///
/// `@unchecked Sendable`: `jobs[i]` and `results[i]` are written by one side before it signals
/// a semaphore and read by the other side after waiting on it, which orders the accesses. They
/// are fixed buffers, not arrays: threads writing different elements of one Swift array at once
/// race on the array's copy-on-write check and reference count.
private final class Crew: @unchecked Sendable {
    let count: Int
    private let jobs: UnsafeMutablePointer<(@Sendable () -> DeviceMapperError?)?>
    private let results: UnsafeMutablePointer<DeviceMapperError?>
    private let start: [DispatchSemaphore]
    private let done = DispatchSemaphore(value: 0)
    private var finished = false

    init(count: Int) {
        self.count = count
        jobs = .allocate(capacity: count)
        jobs.initialize(repeating: nil, count: count)
        results = .allocate(capacity: count)
        results.initialize(repeating: nil, count: count)
        start = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        for index in 0..<count {
            let thread = Thread { [self] in work(index) }
            thread.name = "snapstack-dm-\(index)"
            thread.start()
        }
    }

    private func work(_ index: Int) {
        while true {
            start[index].wait()
            guard let job = jobs[index] else { return }
            results[index] = job()
            done.signal()
        }
    }

    /// Runs `work[i]` on thread i, all at once, and returns their results once all are done.
    func run(_ work: [@Sendable () -> DeviceMapperError?]) -> [DeviceMapperError?] {
        precondition(work.count <= count && !finished)
        for (index, job) in work.enumerated() {
            jobs[index] = job
            start[index].signal()
        }
        for _ in work.indices { done.wait() }
        return (0..<work.count).map { results[$0] }
    }

    deinit {
        jobs.deinitialize(count: count)
        jobs.deallocate()
        results.deinitialize(count: count)
        results.deallocate()
    }

    /// Lets every thread end.
    func finish() {
        guard !finished else { return }
        finished = true
        for index in 0..<count {
            jobs[index] = nil
            start[index].signal()
        }
    }
}

extension DeviceMapperClient {
    /// Makes the transaction's udev cookie now (`dm_udev_create_cookie`) instead of at its first
    /// task, so that libdm's first look at udev and its semaphore setup happen before a freeze
    /// window rather than inside it. A no-op when the cookie exists or udev does not run.
    public func prepare(_ transaction: UdevTransaction) {
        Self.libdm.withLock { _ in
            snapstack_dm_log_reset()
            guard transaction.cookie == 0, dm_udev_get_sync_support() != 0 else { return }
            var cookie: UInt32 = 0
            if dm_udev_create_cookie(&cookie) != 0 { transaction.cookie = cookie }
        }
    }
}
