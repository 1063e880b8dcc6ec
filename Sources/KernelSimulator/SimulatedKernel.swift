import BlockIO
import DeviceMapper
import Snapstack
import Synchronization
import SystemPackage

/// A kernel in memory, for running every verb of the orchestrator without root: device-mapper
/// devices with live and inactive tables, suspension and open counts; loop devices over real
/// (sparse) files; and disks a test plugs in. What it models is what the orchestrator relies on:
///
/// - A table holds every device it names open, live or inactive; `remove` of an open device
///   fails with EBUSY; `resume` swaps in the inactive table.
/// - A loop device keeps the size its file had when it was attached or refreshed; detaching one
///   that a table still holds is deferred until the table lets go, as the kernel's autoclear is.
/// - Status lines are rendered as the kernel prints them and parsed by the library's own
///   parsers: era (a checkpoint starts the next era), snapshot (usage a test can set; the COW
///   device's size), snapshot-merge (complete at once).
///
/// Its whole state is a value (`State`): a test takes it at a failpoint, as a crash would
/// leave the kernel, and puts it back before the "next boot's" reconcile. `faultAt` makes the
/// n-th change fail, to drive rollbacks at every position.
public final class SimulatedKernel: Sendable {
    public struct Device: Equatable, Sendable {
        public var uuid: String?
        public var number: DeviceNumber
        public var live: Table?
        public var inactive: Table?
        public var suspended = false
        public var readOnly = false
        /// Opens from outside: a mounted filesystem, a reader.
        public var externalOpens = 0
        public var era: UInt32 = 1
        public var heldMetadataRoot: UInt64?
        /// Sectors a snapshot has allocated in its COW device, beyond its metadata.
        public var allocatedData = Sectors.zero
        public var invalid = false
        public var eventNumber: UInt32 = 0
    }

    public struct Loop: Equatable, Sendable {
        public var file: String
        public var directIO: Bool
        public var size: Bytes
        /// Detached while a table held it: gone once nothing does.
        public var autoclear = false
    }

    public struct Disk: Equatable, Sendable {
        public var number: DeviceNumber
        public var size: Bytes
        public var identity: DeviceIdentity
        public var usage = DeviceUsage()
        public var openers: [String] = []
        /// It holds an LVM physical volume label.
        public var lvmLabel = false
        /// udev's links to it (`/dev/disk/by-id/...`).
        public var links: [String] = []
        /// Its first bytes (a filesystem's superblock); zeros past them.
        public var head: [UInt8] = []
    }

    /// An LVM volume group: its volumes are disks at `/dev/<group>/<name>`.
    public struct VolumeGroup: Equatable, Sendable {
        public var size: Bytes
        public var extentSize: Bytes
        public var physicalVolumes: [String]
        public var volumes: [String: (tags: [String], size: Bytes)] = [:]

        public static func == (a: Self, b: Self) -> Bool {
            a.size == b.size && a.extentSize == b.extentSize && a.physicalVolumes == b.physicalVolumes
                && a.volumes.mapValues { "\($0.tags) \($0.size.rawValue)" } == b.volumes.mapValues { "\($0.tags) \($0.size.rawValue)" }
        }

        public var free: Bytes { Bytes(size.rawValue - volumes.values.reduce(0) { $0 + $1.size.rawValue }) }
    }

    public struct State: Equatable, Sendable {
        public var devices: [String: Device] = [:]
        public var loops: [Int: Loop] = [:]
        public var disks: [String: Disk] = [:]
        public var volumeGroups: [String: VolumeGroup] = [:]
        public var nextVolumeMinor: UInt32 = 0
        public var nextDMMinor: UInt32 = 0
        /// What `fileSystem(of:)` answers for every directory (nil: cannot tell).
        public var fileSystem: FileSystemType?
        /// Files made or grown with their blocks reserved (`preallocate`).
        public var preallocatedFiles: Set<String> = []
        /// What uses a device known by a path that is not a disk (a dm device's node).
        public var pathUsage: [String: DeviceUsage] = [:]
        /// How many times the initramfs was made again.
        public var initramfsUpdates = 0
        /// Makes the next initramfs update fail, as a full /boot would.
        public var failInitramfs = false
        /// Devices that fail every write: an era target keeping its metadata on one can no
        /// longer commit. As dm-era then does, its status reads `Error`, its messages fail with
        /// EIO, and a resume that swaps it in (or resumes it) fails, leaving it suspended.
        public var failingWrites: Set<DeviceNumber> = []
        /// Every change made, in order (`create snapstack-a`, `suspend snapstack-a`, ...).
        public var log: [String] = []
    }

    let state: Mutex<State>
    /// The change (counted from 1 across device-mapper, loop devices and files) that fails
    /// with EIO; nil for none. Counted across calls until it fires, then cleared.
    let fault = Mutex<(countdown: Int?, fired: String?)>((nil, nil))
    public let runtimeDirectory: String

    public init(runtimeDirectory: String) {
        self.runtimeDirectory = runtimeDirectory
        state = Mutex(State())
    }

    /// The orchestrator's view of this kernel.
    public var kernel: Kernel { Kernel(deviceMapper: self, host: self, volumes: self) }

    // MARK: What a test does to it

    /// A disk appears at `path`.
    public func plug(_ path: String, number: DeviceNumber, size: Bytes, serial: String? = nil) {
        state.withLock {
            $0.disks[path] = Disk(number: number, size: size, identity: DeviceIdentity(serial: serial, size: size))
        }
    }

    /// Writes `bytes` at the start of the disk at `path`, as mkfs or a mount would write its
    /// superblock.
    public func writeHead(_ path: String, _ bytes: [UInt8]) {
        state.withLock { $0.disks[path]?.head = bytes }
    }

    public func unplug(_ path: String) { _ = state.withLock { $0.disks.removeValue(forKey: path) } }

    /// Someone opens (or, with -1, closes) the dm device `name`: a mount, a reader.
    public func open(_ name: String, by delta: Int = 1) {
        state.withLock { $0.devices[name]?.externalOpens += delta }
    }

    /// The kernel's view of a snapshot's COW use changes (copy-on-write happened).
    public func setAllocated(_ name: String, _ sectors: Sectors) {
        state.withLock { $0.devices[name]?.allocatedData = sectors }
    }

    public func setDiskUsage(_ path: String, _ usage: DeviceUsage) { state.withLock { $0.disks[path]?.usage = usage } }

    /// Makes every initramfs update fail (true) or succeed again.
    public var failInitramfs: Bool {
        get { state.withLock { $0.failInitramfs } }
        set { state.withLock { $0.failInitramfs = newValue } }
    }

    /// What uses the device at `path` when it is not a disk: a mount of a dm device, say.
    public func setUsage(ofPath path: String, _ usage: DeviceUsage) { state.withLock { $0.pathUsage[path] = usage } }

    /// The disk at `path` becomes an LVM physical volume, with udev links `links`.
    public func makePhysicalVolume(_ path: String, links: [String] = []) {
        state.withLock {
            $0.disks[path]?.lvmLabel = true
            $0.disks[path]?.links = links
        }
    }

    /// An LVM volume group of `size` on the disks `physicalVolumes`, with 4 MiB extents.
    public func makeVolumeGroup(_ name: String, size: Bytes, physicalVolumes: [String]) {
        state.withLock { $0.volumeGroups[name] = VolumeGroup(size: size, extentSize: .mebibytes(4), physicalVolumes: physicalVolumes) }
    }

    /// The file system every file of the state is on, as `statfs` would say.
    public func setFileSystem(_ type: FileSystemType?) {
        state.withLock { $0.fileSystem = type }
    }

    /// The state as it is now: what a crash at this instant leaves.
    public func capture() -> State { state.withLock { $0 } }

    /// Puts back a captured state; the log is kept as it was captured.
    public func restore(_ captured: State) { state.withLock { $0 = captured } }

    /// A reboot: device-mapper and loop devices are gone, disks and logical volumes stay.
    public func reboot() {
        state.withLock {
            $0.devices = [:]
            $0.loops = [:]
            $0.log.append("reboot")
        }
    }

    /// Makes the `n`-th change from now fail with EIO.
    public func failChange(_ n: Int) { fault.withLock { $0 = (n, nil) } }

    /// The change that failed, if the armed fault fired.
    public var firedFault: String? { fault.withLock { $0.fired } }

    // MARK: Internals shared by the device-mapper and host sides

    /// Records a change, failing it if the armed fault says so.
    func change(_ what: String) throws {
        try fault.withLock { fault in
            guard let countdown = fault.countdown else { return }
            if countdown <= 1 {
                fault = (nil, what)
                throw SimulatedFault(operation: what)
            }
            fault.countdown = countdown - 1
        }
        state.withLock { $0.log.append(what) }
    }
}

/// The failure a simulated kernel injects: EIO from `operation`.
public struct SimulatedFault: Error, CustomStringConvertible, Equatable {
    public var operation: String
    public var description: String { "\(operation): Input/output error (simulated)" }
}

extension SimulatedKernel.State {
    /// How many tables (live or inactive) hold the device `number` open.
    func holders(of number: DeviceNumber) -> Int {
        devices.values.reduce(0) { count, device in
            count + [device.live, device.inactive].compactMap { $0 }.reduce(0) { $0 + $1.referencedDevices.filter { $0 == number }.count }
        }
    }

    /// The device a table reference names, as a number.
    /// Whether `target` is an era whose metadata device fails writes.
    func eraMetadataFails(_ target: Target?) -> Bool {
        guard case .era(let era)? = target, let metadata = resolve(era.metadata) else { return false }
        return failingWrites.contains(metadata)
    }

    func resolve(_ reference: DeviceReference) -> DeviceNumber? {
        switch reference {
        case .number(let number): return number
        case .path(let path): return number(ofPath: path)
        }
    }

    func number(ofPath path: String) -> DeviceNumber? {
        if let disk = disks[path] { return disk.number }
        if path.hasPrefix("/dev/loop"), let index = Int(path.dropFirst("/dev/loop".count)), loops[index] != nil {
            return DeviceNumber(major: 7, minor: UInt32(index))
        }
        if path.hasPrefix("/dev/mapper/") { return devices[String(path.dropFirst("/dev/mapper/".count))]?.number }
        return nil
    }

    /// The size of the device `number`, nil when nothing has that number.
    func size(of number: DeviceNumber) -> Bytes? {
        if number.major == 7 { return loops[Int(number.minor)]?.size }
        if let disk = disks.values.first(where: { $0.number == number }) { return disk.size }
        if let device = devices.values.first(where: { $0.number == number }) {
            return Bytes((device.live?.size.rawValue ?? 0) * Sectors.size)
        }
        return nil
    }

    /// Detaches loop devices marked autoclear that no table holds any more.
    mutating func clearReleasedLoops() {
        for (index, loop) in loops where loop.autoclear && holders(of: DeviceNumber(major: 7, minor: UInt32(index))) == 0 {
            loops.removeValue(forKey: index)
        }
    }
}
