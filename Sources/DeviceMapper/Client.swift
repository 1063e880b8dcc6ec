import BlockIO
import CDeviceMapper
import CShims
import Synchronization
import SystemPackage

// About 430 lines in one file: every call below goes through the private libdm plumbing at
// its end (task set-up, cookies, the captured log), which no other file should reach.

/// The device-mapper client: each method is one libdm task (one ioctl, plus the udev
/// handshake for create, resume and remove, so that `/dev/mapper/NAME` exists or is gone
/// when the call returns).
///
/// libdm keeps process-global state (its logger, the control descriptor, udev cookies), so
/// every task runs under one process-wide lock. libdm's messages are captured into the error
/// that is thrown, never printed.
public struct DeviceMapperClient: Sendable {
    static let libdm: Mutex<Void> = {
        snapstack_dm_log_install()
        return Mutex(())
    }()

    public init() {}

    // MARK: Queries

    /// The kernel driver's version (`DM_VERSION`), e.g. `4.47.0`.
    public func driverVersion() throws -> String {
        try task(DM_DEVICE_VERSION, "version", device: nil) { dmt in
            try run(dmt, "version", nil)
            var buffer = [CChar](repeating: 0, count: 64)
            guard dm_task_get_driver_version(dmt, &buffer, buffer.count) != 0 else {
                throw failure(dmt, "version", nil)
            }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// Target types the kernel has loaded (`DM_LIST_VERSIONS`). A target whose module is not
    /// loaded yet (`dm-era`, `dm-snapshot`) is absent until something loads it.
    public func targetVersions() throws -> [TargetVersion] {
        try task(DM_DEVICE_LIST_VERSIONS, "list-versions", device: nil) { dmt in
            try run(dmt, "list-versions", nil)
            var result: [TargetVersion] = []
            var entry = dm_task_get_versions(dmt)
            while let current = entry {
                result.append(TargetVersion(
                    name: String(cString: snapstack_dm_versions_name(current)),
                    major: current.pointee.version.0, minor: current.pointee.version.1,
                    patch: current.pointee.version.2))
                entry = snapstack_dm_versions_next(current)
            }
            return result
        }
    }

    /// Every device-mapper device (`DM_LIST_DEVICES`).
    public func list() throws -> [ListedDevice] {
        try task(DM_DEVICE_LIST, "list", device: nil) { dmt in
            try run(dmt, "list", nil)
            var result: [ListedDevice] = []
            var entry = dm_task_get_names(dmt)
            // An empty list is one entry with dev 0.
            if let first = entry, first.pointee.dev == 0 { entry = nil }
            while let current = entry {
                result.append(ListedDevice(
                    name: String(cString: snapstack_dm_names_name(current)),
                    number: DeviceNumber(kernelEncoded: current.pointee.dev)))
                entry = snapstack_dm_names_next(current)
            }
            return result
        }
    }

    /// The device's state, or nil when no device of that name exists (`DM_DEV_STATUS`).
    public func info(_ name: DMName) throws -> DeviceInfo? {
        try info(rawName: name.rawValue)
    }

    /// `info` for a name read from the kernel, which need not satisfy `DMName`.
    public func info(rawName name: String) throws -> DeviceInfo? {
        try task(DM_DEVICE_INFO, "info", device: name) { dmt -> DeviceInfo? in
            try set(dm_task_set_name(dmt, name), dmt, "info", name)
            try run(dmt, "info", name)
            var info = dm_info()
            guard dm_task_get_info(dmt, &info) != 0 else { throw failure(dmt, "info", name) }
            guard info.exists != 0 else { return nil }
            let uuid = dm_task_get_uuid(dmt).map { String(cString: $0) }
            return DeviceInfo(
                name: name, uuid: uuid?.isEmpty == false ? uuid : nil,
                number: DeviceNumber(major: info.major, minor: info.minor),
                suspended: info.suspended != 0, hasLiveTable: info.live_table != 0,
                hasInactiveTable: info.inactive_table != 0, openCount: Int(info.open_count),
                eventNumber: info.event_nr, readOnly: info.read_only != 0, targetCount: Int(info.target_count))
        }
    }

    /// The live table's lines as the kernel prints them (`DM_TABLE_STATUS` with the table flag).
    public func rawTable(_ name: DMName) throws -> [RawTargetLine] {
        try targetLines(DM_DEVICE_TABLE, "table", name)
    }

    /// The status lines as the kernel prints them (`DM_TABLE_STATUS`).
    public func rawStatus(_ name: DMName) throws -> [RawTargetLine] {
        try targetLines(DM_DEVICE_STATUS, "status", name)
    }

    // MARK: Changes

    /// Creates `name` with `table` live (`DM_DEV_CREATE`, `DM_TABLE_LOAD`, `DM_DEV_SUSPEND`
    /// resume), and waits for udev. A device of that name that already exists is refused and
    /// left alone; if loading or resuming fails, the device this call created is removed again.
    public func create(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool = false,
                       udevFlags: UdevFlags = []) throws {
        try checked(table, "create", name)
        try refuseExisting(name)
        do {
            try task(DM_DEVICE_CREATE, "create", device: name.rawValue) { dmt in
                try set(dm_task_set_name(dmt, name.rawValue), dmt, "create", name.rawValue)
                if let uuid { try set(dm_task_set_uuid(dmt, uuid.rawValue), dmt, "create", name.rawValue) }
                if readOnly { try set(dm_task_set_ro(dmt), dmt, "create", name.rawValue) }
                try add(table, to: dmt, "create", name)
                // libdm creates, loads and resumes in one task; on a failed load it removes
                // the device again itself.
                try withCookie(dmt, udevFlags, nil, "create", name.rawValue) {
                    try run(dmt, "create", name.rawValue)
                }
            }
        } catch let error as DeviceMapperError {
            throw removeLeftover(name, uuid: uuid, after: error)
        }
    }

    /// Creates `name` with `table` loaded in the inactive slot only: the device exists but
    /// passes no I/O until `resume`. This is the "preload" step that keeps slow work out of a
    /// freeze window. On failure the device is removed again.
    public func createInactive(_ name: DMName, uuid: DMUUID?, table: Table, readOnly: Bool = false) throws {
        try checked(table, "create", name)
        try refuseExisting(name)
        try task(DM_DEVICE_CREATE, "create", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "create", name.rawValue)
            if let uuid { try set(dm_task_set_uuid(dmt, uuid.rawValue), dmt, "create", name.rawValue) }
            if readOnly { try set(dm_task_set_ro(dmt), dmt, "create", name.rawValue) }
            try run(dmt, "create", name.rawValue)
        }
        do {
            try load(name, table: table, readOnly: readOnly)
        } catch let error as DeviceMapperError {
            throw removeLeftover(name, uuid: uuid, after: error)
        }
    }

    /// Loads `table` into the inactive slot of an existing device (`DM_TABLE_LOAD`); it takes
    /// effect at the next `resume`.
    public func load(_ name: DMName, table: Table, readOnly: Bool = false) throws {
        try checked(table, "reload", name)
        try task(DM_DEVICE_RELOAD, "reload", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "reload", name.rawValue)
            if readOnly { try set(dm_task_set_ro(dmt), dmt, "reload", name.rawValue) }
            try add(table, to: dmt, "reload", name)
            try run(dmt, "reload", name.rawValue)
        }
    }

    /// Discards an inactive table (`DM_TABLE_CLEAR`): the way back from a `load` that will not
    /// be resumed.
    public func clearInactive(_ name: DMName) throws {
        try simple(DM_DEVICE_CLEAR, "clear", name)
    }

    /// Suspends `name` (`DM_DEV_SUSPEND`): new I/O queues until `resume`. Without `.noLockFS`
    /// the filesystem above is frozen first, which makes the snapshot point crash-consistent.
    /// Prefer `withSuspended`, which guarantees the resume.
    public func suspend(_ name: DMName, options: SuspendOptions = []) throws {
        try task(DM_DEVICE_SUSPEND, "suspend", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "suspend", name.rawValue)
            if options.contains(.noLockFS) { try set(dm_task_skip_lockfs(dmt), dmt, "suspend", name.rawValue) }
            if options.contains(.noFlush) { try set(dm_task_no_flush(dmt), dmt, "suspend", name.rawValue) }
            try run(dmt, "suspend", name.rawValue)
        }
    }

    /// Resumes `name` (`DM_DEV_SUSPEND` without the suspend flag), swapping in an inactive table
    /// if one was loaded, and waits for udev — or, inside `withUdevTransaction`, leaves the wait
    /// to the end of the transaction.
    public func resume(_ name: DMName, udevFlags: UdevFlags = [], transaction: UdevTransaction? = nil) throws {
        try task(DM_DEVICE_RESUME, "resume", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "resume", name.rawValue)
            try withCookie(dmt, udevFlags, transaction, "resume", name.rawValue) {
                try run(dmt, "resume", name.rawValue)
            }
        }
    }

    /// Removes `name` (`DM_DEV_REMOVE`) and waits for udev to drop its node. libdm retries a
    /// few times when the device is held only briefly (udev's blkid probe). Returns false, and
    /// changes nothing, when no such device exists: removal is idempotent.
    @discardableResult
    public func remove(_ name: DMName) throws -> Bool {
        guard try info(name) != nil else { return false }
        try task(DM_DEVICE_REMOVE, "remove", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "remove", name.rawValue)
            try set(dm_task_retry_remove(dmt), dmt, "remove", name.rawValue)
            try withCookie(dmt, [], nil, "remove", name.rawValue) {
                try run(dmt, "remove", name.rawValue)
            }
        }
        return true
    }

    /// Removes `name` when its last opener closes it (`DM_DEV_REMOVE` with `DM_DEFERRED_REMOVE`,
    /// `dm_task_deferred_remove`): at once if nothing has it open, else the kernel marks it and
    /// removes it on the last close. Never retries and never waits for the device; udev is
    /// waited for only when the kernel removed it now (libdm completes the cookie itself when
    /// the kernel generated no uevent). Returns false when no such device exists.
    @discardableResult
    public func removeDeferred(_ name: DMName) throws -> Bool {
        guard try info(name) != nil else { return false }
        try task(DM_DEVICE_REMOVE, "remove", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "remove", name.rawValue)
            try set(dm_task_deferred_remove(dmt), dmt, "remove", name.rawValue)
            try withCookie(dmt, [], nil, "remove", name.rawValue) {
                try run(dmt, "remove", name.rawValue)
            }
        }
        return true
    }

    /// Sends a target message (`DM_TARGET_MSG`) to the line at `sector` and returns the
    /// target's answer, nil when it gave none.
    @discardableResult
    public func message(_ name: DMName, sector: Sectors = .zero, _ text: String) throws -> String? {
        guard !text.contains(where: \.isNewline) else {
            throw DeviceMapperError(kind: .failed, operation: "message", device: name.rawValue,
                                    messages: ["a target message is one line"])
        }
        return try task(DM_DEVICE_TARGET_MSG, "message", device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, "message", name.rawValue)
            try set(dm_task_set_sector(dmt, sector.rawValue), dmt, "message", name.rawValue)
            try set(dm_task_set_message(dmt, text), dmt, "message", name.rawValue)
            try run(dmt, "message", name.rawValue)
            guard let response = dm_task_get_message_response(dmt) else { return nil }
            let text = String(cString: response)
            return text.isEmpty ? nil : text
        }
    }

    // MARK: udev

    /// Runs `body` with a transaction for `resume`, then waits once for udev to have processed
    /// every node change made in it — also when `body` throws.
    public func withUdevTransaction<T>(_ body: (UdevTransaction) throws -> T) rethrows -> T {
        let transaction = UdevTransaction()
        defer {
            if transaction.cookie != 0 {
                Self.libdm.withLock { _ in _ = dm_udev_wait(transaction.cookie) }
            }
        }
        return try body(transaction)
    }

    // MARK: Guaranteed resume

    /// Suspends `names` in order, runs `body`, then resumes them in reverse order — on success,
    /// on a thrown error and when a later suspend fails. A device is never left suspended by
    /// this call: if a resume fails it is retried once and the failure is reported with the
    /// original error.
    /// Pass a `transaction` to keep the resumes' udev waits out of the window.
    public func withSuspended<T>(_ names: [DMName], options: SuspendOptions = [],
                                 transaction: UdevTransaction? = nil,
                                 _ body: () throws -> T) throws -> T {
        try MemoryLock.whileSuspending(names) { try withSuspendedUnlocked(names, options: options, transaction: transaction, body) }
    }

    private func withSuspendedUnlocked<T>(_ names: [DMName], options: SuspendOptions, transaction: UdevTransaction?,
                                          _ body: () throws -> T) throws -> T {
        var suspended: [DMName] = []
        func resumeAll() -> [String] {
            var failures: [String] = []
            for name in suspended.reversed() {
                do { try resume(name, transaction: transaction) } catch {
                    do { try resume(name, transaction: transaction) } catch { failures.append("\(error)") }
                }
            }
            suspended.removeAll()
            return failures
        }
        return try ResumeGuarantee.run({
            for name in names {
                try suspend(name, options: options)
                suspended.append(name)
            }
            return try body()
        }, resumingWith: resumeAll)
    }

    // MARK: libdm plumbing

    /// Runs `body` with a fresh task of `type` under the process-wide libdm lock.
    private func task<T: Sendable>(_ type: Int, _ operation: String, device: String?,
                                   _ body: (OpaquePointer) throws -> T) throws -> T {
        try Self.libdm.withLock { _ in
            snapstack_dm_log_reset()
            guard let dmt = dm_task_create(Int32(type)) else {
                throw DeviceMapperError(kind: .failed, operation: operation, device: device,
                                        messages: capturedMessages())
            }
            defer { dm_task_destroy(dmt) }
            return try body(dmt)
        }
    }

    private func simple(_ type: Int, _ operation: String, _ name: DMName) throws {
        try task(type, operation, device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, operation, name.rawValue)
            try run(dmt, operation, name.rawValue)
        }
    }

    private func targetLines(_ type: Int, _ operation: String, _ name: DMName) throws -> [RawTargetLine] {
        try task(type, operation, device: name.rawValue) { dmt in
            try set(dm_task_set_name(dmt, name.rawValue), dmt, operation, name.rawValue)
            try run(dmt, operation, name.rawValue)
            var info = dm_info()
            if dm_task_get_info(dmt, &info) != 0, info.exists == 0 {
                throw DeviceMapperError(kind: .noSuchDevice, operation: operation, device: name.rawValue)
            }
            var lines: [RawTargetLine] = []
            var next: UnsafeMutableRawPointer? = nil
            repeat {
                var start: UInt64 = 0, length: UInt64 = 0
                var type: UnsafeMutablePointer<CChar>? = nil, params: UnsafeMutablePointer<CChar>? = nil
                next = dm_get_next_target(dmt, next, &start, &length, &type, &params)
                if let type {
                    lines.append(RawTargetLine(start: Sectors(start), length: Sectors(length),
                                               type: String(cString: type),
                                               text: params.map { String(cString: $0) } ?? ""))
                }
            } while next != nil
            return lines
        }
    }

    private func add(_ table: Table, to dmt: OpaquePointer, _ operation: String, _ name: DMName) throws {
        for line in table.lines {
            try set(dm_task_add_target(dmt, line.start.rawValue, line.length.rawValue,
                                       line.target.type, line.target.parameters),
                    dmt, operation, name.rawValue)
        }
    }

    private func checked(_ table: Table, _ operation: String, _ name: DMName) throws {
        do { try table.validate() } catch {
            throw DeviceMapperError(kind: .invalidTable(error), operation: operation, device: name.rawValue)
        }
    }

    private func refuseExisting(_ name: DMName) throws {
        if try info(name) != nil {
            throw DeviceMapperError(kind: .alreadyExists, operation: "create", device: name.rawValue)
        }
    }

    /// After a failed create: removes the device if it exists and is the one this call made
    /// (same UUID, or none on both sides), and records a removal failure in the error.
    private func removeLeftover(_ name: DMName, uuid: DMUUID?, after error: DeviceMapperError) -> DeviceMapperError {
        var result = error
        do {
            if let info = try info(name), info.uuid == uuid?.rawValue {
                try remove(name)
            }
        } catch {
            result.rollbackFailure = "\(name) may be left over: \(error)"
        }
        return result
    }

    /// Attaches a udev cookie to a task that makes udev create or remove a node. Without a
    /// transaction it always waits on it afterwards, failed or not, so that the semaphore is
    /// released; with one, the transaction's end waits for all its tasks at once.
    private func withCookie(_ dmt: OpaquePointer, _ flags: UdevFlags, _ transaction: UdevTransaction?,
                            _ operation: String, _ device: String, _ body: () throws -> Void) throws {
        if let transaction {
            try set(dm_task_set_cookie(dmt, &transaction.cookie, flags.rawValue), dmt, operation, device)
            try body()
            return
        }
        var cookie: UInt32 = 0
        try set(dm_task_set_cookie(dmt, &cookie, flags.rawValue), dmt, operation, device)
        defer { if cookie != 0 { _ = dm_udev_wait(cookie) } }
        try body()
    }

    private func run(_ dmt: OpaquePointer, _ operation: String, _ device: String?) throws {
        guard dm_task_run(dmt) != 0 else { throw failure(dmt, operation, device) }
    }

    private func set(_ result: Int32, _ dmt: OpaquePointer, _ operation: String, _ device: String?) throws {
        guard result != 0 else { throw failure(dmt, operation, device) }
    }

    private func failure(_ dmt: OpaquePointer, _ operation: String, _ device: String?) -> DeviceMapperError {
        let messages = capturedMessages()
        var code = dm_task_get_errno(dmt)
        if code == 0 { code = snapstack_dm_log_errno() }
        let errno = code != 0 ? Errno(rawValue: code) : nil
        let kind: DeviceMapperError.Kind
        if messages.contains(where: { $0.contains("/dev/mapper/control") || $0.contains("Failure to communicate with kernel") }) {
            kind = .driverUnavailable
        } else if errno == .noSuchAddressOrDevice && operation != "create" {
            kind = .noSuchDevice
        } else {
            kind = .failed
        }
        return DeviceMapperError(kind: kind, operation: operation, device: device, errno: errno, messages: messages)
    }

    private func capturedMessages() -> [String] {
        String(cString: snapstack_dm_log_text()).split(separator: "\n").map(String.init)
    }
}
