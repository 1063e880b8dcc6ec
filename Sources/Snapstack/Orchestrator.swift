import BlockIO
import DeviceMapper
import Foundation
import Locking
import SnapstackErrors
internal import StateDatabase
import SystemPackage
import Udev

/// The orchestrator behind every command that changes or reads snapstack's state: it owns the
/// state lock and the database, and maps the model (protected devices, snapshot sets) onto
/// device-mapper tables — the one place that does, as lvm2's dev_manager.c is for LVM.
///
/// Every multi-step change records its intent in the database before touching the kernel and
/// its outcome after, so that `reconcile` can finish or undo it after a crash.
public final class Orchestrator {
    public let stateDirectory: FilePath
    let database: StateDatabase
    /// The kernel's device-mapper, and the rest of the host: the only way out of the process.
    let dm: any DeviceMapperControl
    let host: any HostDevices
    /// LVM, for the snapshot stores snapstack puts on volumes of its own.
    let volumes: any LogicalVolumes
    /// The state lock; nil only while `withStateLockReleased` runs its body.
    private var lock: FileLock?
    private let lockMode: FileLock.Mode
    /// How long to wait for a lock: the state's, and LVM's on an adopted volume's group.
    let lockTimeout: Double
    /// Progress and notices for the person at the terminal (stderr in the CLI).
    public var notice: (String) -> Void = { _ in }
    /// Called at every failpoint. By default a failpoint kills the process when
    /// `SNAPSTACK_FAILPOINT` names it (the VM suite's crashes); on a simulated kernel a test
    /// captures the state there instead and throws, to crash without leaving the process.
    public var onFailpoint: (Failpoint) throws -> Void = { $0.hit() }

    /// Opens the state (creating it on first use) under the lock. Commands that only report
    /// take the lock shared, so that they run beside each other but never see a half-done change.
    public init(stateDirectory: FilePath, lockTimeout: Double = 30, mode: FileLock.Mode = .exclusive,
                kernel: Kernel = .live) throws {
        self.stateDirectory = stateDirectory
        self.lockTimeout = lockTimeout
        lockMode = mode
        dm = kernel.deviceMapper
        host = kernel.host
        volumes = kernel.volumes
        try StateDirectory.make(stateDirectory)
        lock = try FileLock(directory: stateDirectory, mode: mode, timeout: lockTimeout)
        do {
            database = try StateDatabase(directory: stateDirectory.string)
        } catch {
            throw SnapstackError(.stateUnreadable, "cannot open snapstack's state database", why: "\(error)", cause: error)
        }
    }

    /// Runs `body` without the state lock, for the long part of an operation that only reads
    /// a device it already holds open: an export's copy. Meanwhile the other commands and the
    /// store watch work (a store must be able to grow while its snapshot is read for hours),
    /// and nothing the copy reads can go away: the kernel refuses to remove an open device, and
    /// `drop` and `merge` refuse an open snapshot. The lock is taken again, in the same mode,
    /// before this returns, also when `body` throws (its error wins over the lock's).
    func withStateLockReleased<T>(_ body: () throws -> T) throws -> T {
        lock = nil  // closing the descriptor releases the flock
        let result = Result { try body() }
        do {
            lock = try FileLock(directory: stateDirectory, mode: lockMode, timeout: lockTimeout)
        } catch {
            if case .failure(let bodyError) = result { throw bodyError }
            throw error
        }
        return try result.get()
    }

    // MARK: Paths

    var metadataDirectory: FilePath { stateDirectory.appending("cbt") }
    var storeDirectory: FilePath { stateDirectory.appending("stores") }

    /// `/run/snapstack/members`: which disk each stack is over now, for the udev rules.
    var memberMarkersDirectory: String { host.runtimeDirectory + "/members" }

    func metadataPath(deviceID: String) -> FilePath { metadataDirectory.appending("\(deviceID).era") }

    // MARK: Lookups

    /// The protected device called `name`.
    func device(named name: String) throws -> DeviceRecord {
        guard let record = try database.device(named: name) else {
            throw SnapstackError(.notFound, "no protected device is named \"\(name.replacingNewlines)\"",
                                 remedy: "`snapstack devices` lists them")
        }
        return record
    }

    /// A snapshot named as the user may write it: `NAME-SNAP`, `snapstack-NAME-SNAP` or the
    /// device path `snapshot` printed.
    func snapshot(named argument: String) throws -> (SnapshotRecord, DeviceRecord) {
        var name = argument
        for prefix in ["/dev/mapper/", Layout.namePrefix] where name.hasPrefix(prefix) {
            name.removeFirst(prefix.count)
        }
        for device in try database.devices() {
            for snapshot in try database.snapshots(deviceID: device.id) where "\(device.name)-\(snapshot.name)" == name {
                return (snapshot, device)
            }
        }
        throw SnapstackError(.notFound, "no snapshot is named \"\(argument.replacingNewlines)\"",
                             remedy: "`snapstack snapshots` lists them")
    }

    // MARK: Kernel helpers

    /// The device number of a live dm device of ours, or a failure naming it.
    func number(of name: DMName) throws -> DeviceNumber {
        guard let info = try dm.info(name) else {
            throw SnapstackError(.failed, "\(name.devicePath) does not exist",
                                 remedy: "run `snapstack reconcile` to rebuild the stack")
        }
        return info.number
    }

    /// The top table a device should have, from what its snapshots are doing: snapshot-merge
    /// while one merges, snapshot-origin while any other lives, linear otherwise.
    func desiredTopTable(_ device: DeviceRecord, real: DeviceNumber, snapshots: [SnapshotRecord],
                         cow: (SnapshotRecord) throws -> DeviceReference) throws -> Table {
        let size = Sectors(UInt64(device.sizeBytes) / Sectors.size)
        if let merging = snapshots.first(where: { $0.state == .merging }) {
            return try Table(length: size, .snapshotMerge(SnapshotMerge(
                origin: .number(real), cow: try cow(merging), chunkSize: Sectors(UInt64(merging.chunkSectors)))))
        }
        if snapshots.contains(where: { $0.state == .active || $0.state == .mergePending }) {
            return try Table(length: size, .snapshotOrigin(SnapshotOrigin(origin: .number(real))))
        }
        return try Table(length: size, .linear(Linear(device: .number(real))))
    }

    /// Loads `table` into `name` and swaps it in, unless it is already live. Idempotent.
    func ensureLiveTable(_ name: DMName, _ table: Table) throws {
        if try dm.table(name) == table { return }
        try dm.load(name, table: table)
        do {
            try dm.withSuspended([name]) {}
        } catch {
            try? dm.clearInactive(name)
            throw error
        }
    }

    /// Runs the undo steps in order after `error`, and returns `error` carrying any undo failures.
    func rollingBack(_ error: any Error, _ steps: [(String, () throws -> Void)]) -> any Error {
        var failures: [String] = []
        for (what, step) in steps {
            do { try step() } catch { failures.append("\(what): \(error)") }
        }
        guard !failures.isEmpty else { return error }
        if var error = error as? SnapstackError {
            error.rollbackFailure = failures.joined(separator: "; ")
            return error
        }
        return SnapstackError(.failed, "\(error)", rollbackFailure: failures.joined(separator: "; "))
    }

    /// Wraps a lower-level failure into a SnapstackError that says what was being done.
    func failing(_ what: String, _ body: () throws -> Void) throws {
        do { try body() } catch let error as SnapstackError {
            throw error
        } catch let error as DeviceMapperError {
            throw SnapstackError(error.kind == .driverUnavailable ? .kernelUnsupported : .failed, what,
                                 why: "\(error)", cause: error)
        } catch {
            throw SnapstackError(.failed, what, why: "\(error)", cause: error)
        }
    }

    func reached(_ point: Failpoint) throws { try onFailpoint(point) }

    func event(_ kind: String, _ subject: String, _ message: String) {
        try? database.record(event: kind, subject: subject, message: message)
    }
}
