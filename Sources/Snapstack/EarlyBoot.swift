import BlockIO
import DeviceMapper
import Foundation
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// Protection of the root filesystem, which the initramfs mounts long before the daemon starts.
///
/// The initramfs cannot read the state database (it lives on `/`), so when the initramfs is
/// made its hook asks for `initramfsPlan()`: the records of the devices that hold `/`, as JSON,
/// written into the initramfs. At boot, its `local-top` script (dracut: its pre-mount hook) runs
/// `stackInInitramfs`, which finds each disk by its identity (an adopted volume by its name,
/// once LVM has activated it), reads its filesystem's stamp before anything writes to it, builds
/// the stack over the recorded era metadata (a logical volume: a file could not be read before
/// `/` is mounted) and leaves a marker in `/run/snapstack/early/ID`. `/run` survives
/// `switch_root`; reconcile, which the daemon runs at start, finds the marker, judges whether
/// the tracking could continue, and takes the stack over as its own.
public struct InitramfsPlan: Codable, Sendable {
    /// Bumped when a field's meaning changes: an initramfs made by another version refuses it
    /// rather than misreading it.
    public static let currentVersion = 1
    var version = InitramfsPlan.currentVersion
    var devices: [DeviceRecord]

    public var isEmpty: Bool { devices.isEmpty }
    public var deviceNames: [String] { devices.map(\.name) }

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .millisecondsSince1970
        return try encoder.encode(self)
    }

    public init(decoding data: Data) throws {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        let plan: InitramfsPlan
        do { plan = try decoder.decode(InitramfsPlan.self, from: data) } catch {
            throw SnapstackError(.invalidArgument, "the initramfs plan is not readable", why: "\(error)",
                                 remedy: "make the initramfs again (update-initramfs -u, or dracut -f) to write it again")
        }
        guard plan.version == Self.currentVersion else {
            throw SnapstackError(.invalidArgument, "the initramfs plan has version \(plan.version), not \(Self.currentVersion)",
                                 remedy: "make the initramfs again (update-initramfs -u, or dracut -f) with this snapstack installed")
        }
        for device in plan.devices {
            do { _ = try device.topName() } catch {
                throw SnapstackError(.invalidArgument, "the initramfs plan names an invalid device", why: "\(error)")
            }
            guard device.cbtBlockSectors == nil || device.eraMetadataVolume != nil else {
                throw SnapstackError(.invalidArgument, "the initramfs plan's \(device.name) has its era metadata in a file",
                                     why: "a file cannot be read before / is mounted")
            }
        }
        self = plan
    }

    init(devices: [DeviceRecord]) { self.devices = devices }
}

/// What the initramfs left for the daemon about one stack it built: the disk's filesystem
/// stamp as it was before the stack existed, the proof a clean stop is checked against.
struct EarlyStackMarker: Codable, Equatable, Sendable {
    var builtAt: Date
    var sourcePath: String
    /// `FilesystemStamp.description`, or nil when the disk showed no filesystem to stamp.
    var diskStamp: String?
    /// Why there is no stamp.
    var unstampable: String?
    /// The stamp the last shutdown recorded after `/` was read-only, when it did.
    var stopStamp: String?
}

extension Orchestrator {
    /// `/run/snapstack/early`: one marker per stack the initramfs built at this boot.
    var earlyMarkerDirectory: String { host.runtimeDirectory + "/early" }

    /// Whether `device`'s filesystem is mounted at `/` now, from its disk (before its first
    /// stack) or its top device.
    func holdsRoot(_ device: DeviceRecord) -> Bool {
        var paths = [device.sourcePath]
        if let top = try? device.topName(), (try? dm.info(top)) != nil { paths.append(top.devicePath) }
        return paths.contains { path in (try? host.usage(of: FilePath(path)).mountPoints.contains("/")) == true }
    }

    /// The records the initramfs needs: every device, protected or waiting for its first stack,
    /// that holds `/`.
    public func initramfsPlan() throws -> InitramfsPlan {
        // An adopted volume is adopted again at boot, before / is mounted from it, when its era
        // metadata can be read there (a volume, not a file).
        let devices = try database.devices().filter {
            ($0.state == .protected || $0.state == .pending) && ($0.eraMetadataVolume != nil || $0.cbtBlockSectors == nil)
                && holdsRoot($0)
        }
        return InitramfsPlan(devices: devices)
    }

    /// Builds, in the initramfs, the stack of every device of `plan` whose disk appears within
    /// `wait` seconds, over its recorded era metadata (which dm-era formats on first use: the
    /// volume was zeroed when it was made). This orchestrator's state is a scratch one in
    /// `/run`. Returns the top device of the disk at `root` (the initramfs's `$ROOT`), when it
    /// was stacked: the device to mount instead. A device that fails is reported and left as it
    /// is: the boot goes on over the bare disk, and the daemon then finds the tracking broken.
    public func stackInInitramfs(_ plan: InitramfsPlan, root: String?, wait: Double) -> String? {
        let rootNumber = root.flatMap { try? host.facts(of: FilePath($0)).number }
        var rootTop: String?
        for planned in plan.devices {
            var record = planned
            record.state = .protected
            record.cleanStopStamp = nil
            record.cleanStopAt = nil
            do {
                let deadline = Date().addingTimeInterval(wait)
                var found = try locate(record)
                while found == nil && Date() < deadline {
                    usleep(250_000)
                    found = try locate(record)
                }
                guard let (path, number) = found else {
                    notice("\(record.name): its disk did not appear within \(Int(wait)) s; booting without its stack")
                    continue
                }
                record.sourcePath = path
                record.sourceMajor = Int(number.major)
                record.sourceMinor = Int(number.minor)
                if try database.device(id: record.id) == nil { try database.insert(record) } else { try database.update(record) }
                // Before the stack exists: what the last shutdown recorded (taken: it proves one
                // boot only), and the stamp of what it left.
                let stop = takeStopRecord(of: record)
                let stamp = filesystemStamp(of: number)
                try buildStack(record, source: number, newMetadata: false)
                var marker = EarlyStackMarker(builtAt: Date(), sourcePath: path, stopStamp: stop)
                switch stamp {
                case .success(let stamp)?: marker.diskStamp = stamp.description
                case .failure(let why)?: marker.unstampable = why.description
                case nil: marker.unstampable = "its first blocks could not be read"
                }
                try writeEarlyMarker(marker, for: record.id)
                notice("\(record.name): stacked \(path) as \(try record.topName().devicePath)")
                // An adopted volume keeps its node: $ROOT stays as it is.
                if number == rootNumber && !record.isAdopted { rootTop = try record.topName().devicePath }
            } catch {
                notice("\(record.name): cannot build its stack: \(error); booting without it")
            }
        }
        return rootTop
    }

    /// Takes back, in the initramfs, the stack `stackInInitramfs` built whose top device is
    /// `top`, and its marker: when / cannot be pointed at the top device, the disk must be free
    /// again for the initramfs to mount it as it is (the stack holds it exclusively). The boot
    /// then goes on as when the stack could not be built. Returns the device's name; nil when
    /// no device of `plan` has that top device. Idempotent.
    public func unstackInInitramfs(_ plan: InitramfsPlan, top: String) throws -> String? {
        guard let record = try plan.devices.first(where: { try !$0.isAdopted && $0.topName().devicePath == top }) else {
            return nil
        }
        for name in [try record.topName(), try Layout.realName(record.name)] where try dm.info(name) != nil {
            try failing("cannot remove \(name.devicePath)") { _ = try dm.remove(name) }
        }
        try? FileManager.default.removeItem(atPath: earlyMarkerDirectory + "/" + record.id)
        notice("\(record.name): its stack is taken back; / is mounted from \(record.sourcePath) without it")
        return record.name
    }

    func writeEarlyMarker(_ marker: EarlyStackMarker, for id: String) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .millisecondsSince1970
        try FileManager.default.createDirectory(atPath: earlyMarkerDirectory, withIntermediateDirectories: true)
        try encoder.encode(marker).write(to: URL(fileURLWithPath: earlyMarkerDirectory + "/" + id), options: .atomic)
    }

    /// The marker the initramfs left for `device` at this boot; nil when it built nothing for
    /// it. An unreadable marker reads as one without a stamp: the tracking is then interrupted.
    func earlyMarker(of device: DeviceRecord) -> EarlyStackMarker? {
        let path = earlyMarkerDirectory + "/" + device.id
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        guard let data = FileManager.default.contents(atPath: path),
              let marker = try? decoder.decode(EarlyStackMarker.self, from: data) else {
            return EarlyStackMarker(builtAt: Date(), sourcePath: device.sourcePath, unstampable: "the initramfs's marker \(path) is not readable")
        }
        return marker
    }

    /// The verdict on a stack the initramfs built: the tracking continues only if the last
    /// shutdown recorded the filesystem's stamp after `/` was read-only, and the disk showed the
    /// same stamp in the initramfs before its stack existed.
    static func earlyContinuity(_ device: DeviceRecord, marker: EarlyStackMarker) -> TrackingContinuity {
        guard device.state == .protected, device.cbtBlockSectors != nil else { return .kept }
        guard let stop = marker.stopStamp, let recorded = FilesystemStamp(parsing: stop) else {
            return .interrupted("no clean shutdown of \(marker.sourcePath) was recorded after / was read-only "
                                + "(a crash, a power cut, or a shutdown that did not run snapstack's hook): nothing proves "
                                + "that nothing wrote to it between the last shutdown and the initramfs's stack")
        }
        guard let line = marker.diskStamp, let now = FilesystemStamp(parsing: line) else {
            return .bypassed("\(marker.sourcePath) no longer shows the filesystem the shutdown recorded: \(marker.unstampable ?? "no stamp")")
        }
        return now == recorded ? .kept : .bypassed("the filesystem on \(marker.sourcePath) changed between the shutdown and the initramfs: \(recorded.changes(to: now))")
    }

    /// Takes over a stack the initramfs built: the device becomes (or stays) protected, its
    /// tracking continues or is interrupted as `continuity` says, its snapshots are given up
    /// (the initramfs mounted `/` through a plain top: writes reached the origin past their
    /// copy-on-write), its disk is marked a member, and the marker is consumed.
    func takeOverEarlyStack(_ device: DeviceRecord, source: DeviceNumber, continuity: TrackingContinuity) throws {
        var record = device
        let first = record.state == .pending
        record.state = .protected
        record.consumeCleanStop(continuity)
        if record != device { try database.update(record) }
        try invalidateSnapshots(of: record, why: "the initramfs mounted \(record.sourcePath) before they could come back")
        if let why = continuity.interruption {
            record = try recordInterruptionEra(record)
            notice("warning: change tracking of \(device.name) is interrupted: \(why); the next incremental needs a full export or --allow-full")
            event(TrackingEvent.interrupted, device.name, "change tracking interrupted: \(why); stack built by the initramfs")
        }
        if !record.isAdopted { publishMember(record, source: source) }
        prepareShutdownRecord(record)
        try? FileManager.default.removeItem(atPath: earlyMarkerDirectory + "/" + device.id)
        event("protect", device.name, first
              ? "protected \(record.sourcePath) (\(source)) as \(try record.topName().devicePath) from the initramfs, as protect --at-boot asked"
              : "took over the stack the initramfs built over \(record.sourcePath) (\(source))")
    }
}

// MARK: The shutdown's record

/// The record a clean shutdown leaves for the next boot at the start of the device's stop
/// volume (`VG/snapstack-ID-stop`): its filesystem's stamp, taken after `/` became read-only.
/// The initramfs reads it and clears it before it builds the stack, so that a record proves
/// one boot only: after a crash there is none.
struct StopRecord: Equatable {
    static let magic = "snapstack-stop"
    var deviceID: String
    var stamp: FilesystemStamp

    var bytes: [UInt8] { Array("\(Self.magic) 1 \(deviceID) \(stamp)\n".utf8) }

    init(deviceID: String, stamp: FilesystemStamp) {
        self.deviceID = deviceID
        self.stamp = stamp
    }

    /// Nil for anything but a whole record: zeros (cleared, or never written), garbage.
    init?(reading bytes: [UInt8]) {
        let head = bytes.prefix(4096)
        guard let end = head.firstIndex(of: 0x0A), let line = String(bytes: head[..<end], encoding: .utf8) else { return nil }
        let words = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        guard words.count == 4, words[0] == Self.magic, words[1] == "1", !words[2].isEmpty,
              let stamp = FilesystemStamp(parsing: String(words[3])) else { return nil }
        self.init(deviceID: String(words[2]), stamp: stamp)
    }
}

/// Where the shutdown writes a device's record, found at takeover: by then LVM cannot be asked
/// (systemd-shutdown removes every device-mapper device nothing holds, the stop volume among
/// them), so the record goes to the disk under the volume, at the volume's offset.
struct ShutdownTarget: Codable, Equatable {
    var deviceID: String
    var name: String
    /// The top device, whose filesystem is stamped.
    var top: String
    /// The stop volume's disk (`MAJ:MIN`) and the volume's start on it, in bytes.
    var disk: String
    var offset: UInt64
}

extension DeviceRecord {
    /// The small volume that carries a shutdown's record, beside the era metadata's volume
    /// (made only for a device that holds /; removing it is idempotent).
    var stopVolume: (group: String, name: String)? {
        eraMetadataVolume.map { ($0.group, Orchestrator.stopVolumeName(deviceID: id)) }
    }
}

extension Orchestrator {
    static func stopVolumeName(deviceID: String) -> String { "snapstack-\(deviceID)-stop" }

    /// `/run/snapstack/shutdown`: one `ShutdownTarget` per device whose clean shutdown is recorded.
    var shutdownTargetDirectory: String { host.runtimeDirectory + "/shutdown" }

    /// Reads the shutdown's record for `device` from its stop volume, and clears it: the
    /// stamp it holds, or nil (none, not this device's, or not cleared: then not to be used).
    func takeStopRecord(of device: DeviceRecord) -> String? {
        guard let (group, name) = device.stopVolume else { return nil }
        do {
            let number = try host.facts(of: FilePath(try activeVolumePath(group: group, name: name))).number
            let record = host.firstBytes(of: number, count: 4096).flatMap(StopRecord.init(reading:))
            guard let record else { return nil }
            try host.overwrite(number, at: .zero, with: [])
            return record.deviceID == device.id ? record.stamp.description : nil
        } catch {
            notice("\(device.name): cannot read and clear the shutdown's record in \(group)/\(name): \(error)")
            return nil
        }
    }

    /// Tells the shutdown where to record `device`'s stamp; a volume that is not one segment on
    /// a plain disk cannot be written without LVM, and is reported instead.
    func prepareShutdownRecord(_ device: DeviceRecord) {
        guard let (group, name) = device.stopVolume else { return }
        do {
            let mapped = try DMName(group.replacingOccurrences(of: "-", with: "--") + "-" + name.replacingOccurrences(of: "-", with: "--"))
            let lines = try dm.table(mapped).lines
            guard lines.count == 1, case .linear(let linear) = lines[0].target, case .number(let disk) = linear.device,
                  host.dmUUID(of: disk) == nil else {
                notice("warning: \(group)/\(name) is not one segment on a plain disk: a shutdown cannot record \(device.name)'s filesystem, so its change tracking is interrupted at every boot")
                return
            }
            let target = ShutdownTarget(deviceID: device.id, name: device.name, top: try device.topName().devicePath,
                                        disk: "\(disk)", offset: linear.offset.rawValue * Sectors.size)
            try FileManager.default.createDirectory(atPath: shutdownTargetDirectory, withIntermediateDirectories: true)
            try JSONEncoder().encode(target).write(to: URL(fileURLWithPath: shutdownTargetDirectory + "/" + device.id), options: .atomic)
        } catch {
            notice("warning: a shutdown cannot record \(device.name)'s filesystem (\(error)), so its change tracking is interrupted at the next boot")
        }
    }

    /// What systemd-shutdown's hook runs, after every filesystem is unmounted or read-only:
    /// for each device the takeover prepared, its filesystem's stamp, written to its stop
    /// volume's place on disk. Only while `/` is read-only: a filesystem that can still change
    /// proves nothing. Returns a line per device.
    public static func recordShutdown(host: any HostDevices, mountinfo: String) -> [String] {
        let directory = host.runtimeDirectory + "/shutdown"
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        guard !files.isEmpty else { return [] }
        guard isReadOnly(mountPoint: "/", mountinfo: mountinfo) else {
            return ["/ is not read-only: no clean shutdown recorded; the change tracking is interrupted at the next boot"]
        }
        return files.map { file in
            guard let data = FileManager.default.contents(atPath: directory + "/" + file),
                  let target = try? JSONDecoder().decode(ShutdownTarget.self, from: data),
                  let disk = DeviceNumber(parsing: target.disk) else {
                return "\(file): the shutdown's target is not readable; nothing recorded"
            }
            guard let top = try? host.facts(of: FilePath(target.top)).number,
                  case .success(let stamp)? = host.firstBytes(of: top, count: FilesystemStamp.bytesNeeded).map(FilesystemStamp.read) else {
                return "\(target.name): \(target.top) shows no filesystem to stamp; nothing recorded"
            }
            do {
                try host.overwrite(disk, at: Bytes(target.offset), with: StopRecord(deviceID: target.deviceID, stamp: stamp).bytes)
                return "\(target.name): clean shutdown recorded: \(stamp)"
            } catch {
                return "\(target.name): cannot record the clean shutdown: \(error)"
            }
        }
    }

    /// Whether the mount at `mountPoint` (the last one there: the one visible) is read-only,
    /// from `/proc/self/mountinfo`.
    static func isReadOnly(mountPoint: String, mountinfo: String) -> Bool {
        var readOnly = false
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 5, fields[4] == mountPoint else { continue }
            readOnly = fields[5].split(separator: ",").contains("ro")
        }
        return readOnly
    }
}
