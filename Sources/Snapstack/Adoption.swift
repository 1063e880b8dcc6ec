import BlockIO
import DeviceMapper
import Foundation
import Locking
import SnapstackErrors
internal import StateDatabase
import SystemPackage

/// Protecting a live device-mapper device (an LVM volume) that may be mounted: device-mapper
/// cannot slide a layer under a mounted partition, but it can under a mounted dm device. Its
/// table is cloned into `snapstack-NAME-clone`, `era` stacked on the clone as `-real`, and the
/// live device reloaded to map through `-real` (linear, or snapshot-origin while snapshots
/// live): one suspend and resume of the live device, which freezes and thaws its filesystem. The
/// live node keeps its name, UUID, device number and openers, and plays the top's role.
///
/// Anyone may reload the live device later (LVM's lvextend, lvchange --refresh, pvmove): its
/// table then no longer maps through `-real`, and writes bypass the tracking. That is found
/// (`Orchestrator.trackingCheck`), recorded as an interruption of change tracking, and the
/// device adopted again over its new table.
enum Adoption {
    /// Why `table` cannot be adopted, and what to do instead; nil when every line is `linear`
    /// or `striped`: tables whose data lies on other devices, block for block, so that a clone
    /// of the table reads and writes exactly what the device did.
    static func refusal(of table: Table, device: String) -> (why: String, remedy: String?)? {
        for line in table.lines {
            switch line.target {
            case .linear, .striped:
                continue
            case .snapshotOrigin, .snapshot, .snapshotMerge:
                return ("it has device-mapper snapshots (its table is \(line.target.type))",
                        "remove its snapshots first (lvremove of its snapshot volumes)")
            case .era:
                return ("it already tracks changes with dm-era", nil)
            case .zero, .error:
                return ("its table maps \(line.target.type), which holds no data", nil)
            case .unmodelled(let type, _):
                switch type {
                case "thin":
                    return ("it is a thin volume (table \(type)): its blocks live in a thin pool, and a pool's volumes cannot be cloned",
                            "back it up from a thin snapshot (lvcreate -s of the thin volume); snapstack adopts linear and striped volumes")
                case "crypt":
                    return ("it is a dm-crypt device", "protect the device under it (`cryptsetup status \(device)` names it)")
                default:
                    return ("its table has a \(type) segment; snapstack adopts only linear and striped tables (plain and striped LVM volumes)", nil)
                }
            }
        }
        return nil
    }

    /// Whether the live device's `table` maps through the stack's `-real` layer `real`.
    static func mapsThroughStack(_ table: Table, real: DeviceNumber) -> Bool {
        guard table.lines.count == 1 else { return false }
        switch table.lines[0].target {
        case .linear(let linear): return linear.device == .number(real) && linear.offset == .zero
        case .snapshotOrigin(let origin): return origin.origin == .number(real)
        case .snapshotMerge(let merge): return merge.origin == .number(real)
        default: return false
        }
    }

    /// The volume group of an LVM volume's dm name; nil for anything else.
    static func volumeGroup(_ name: String, uuid: String?) -> String? {
        let display = displayName(name, uuid: uuid)
        guard display != name || uuid?.hasPrefix("LVM-") == true, let slash = display.firstIndex(of: "/") else { return nil }
        return String(display[..<slash])
    }

    /// An LVM volume's dm name as LVM users write it, `vg/lv` (LVM doubles a dash inside a
    /// name and joins the two with a single one); other names as they are.
    static func displayName(_ name: String, uuid: String?) -> String {
        guard uuid?.hasPrefix("LVM-") == true else { return name }
        let characters = Array(name)
        var index = 0
        while index < characters.count {
            if characters[index] == "-" {
                if index + 1 < characters.count, characters[index + 1] == "-" { index += 2; continue }
                let vg = String(characters[..<index]).replacingOccurrences(of: "--", with: "-")
                let lv = String(characters[(index + 1)...]).replacingOccurrences(of: "--", with: "-")
                return vg.isEmpty || lv.isEmpty ? name : "\(vg)/\(lv)"
            }
            index += 1
        }
        return name
    }
}

extension DeviceRecord {
    var isAdopted: Bool { adoptedName != nil }

    /// The era metadata's logical volume, when it is one (`protect --cbt-metadata VG`).
    var eraMetadataVolume: (group: String, name: String)? { eraMetadataPath.flatMap(Orchestrator.metadataVolume) }

    /// The device filesystems use: the adopted live device, or the top of our own stack.
    func topName() throws -> DMName {
        if let adoptedName { return try DMName(adoptedName) }
        return try Layout.topName(name)
    }
}

/// Whether the change tracking of an adopted device is in place now.
enum TrackingCheck: Equatable {
    /// Not adopted, or its live device maps through the stack.
    case inPlace
    /// The live device is gone (the volume deactivated): nothing writes to it.
    case deviceAbsent
    /// The live device maps elsewhere: someone reloaded it, or the stack is not built (after a
    /// reboot). `table` is its table now.
    case bypassed(table: Table, why: String)
}

extension Orchestrator {
    /// Runs `body` holding LVM's own lock on the volume group of an adopted LVM volume, as
    /// every LVM command that changes the group takes it: no lvextend can reload the volume
    /// between our reading its table and swapping ours in. Other devices need no lock.
    func withVolumeGroupLock<T>(_ device: DeviceRecord, _ body: () throws -> T) throws -> T {
        guard let name = device.adoptedName, let group = Adoption.volumeGroup(name, uuid: device.adoptedUUID) else { return try body() }
        let directory = host.lvmLockDirectory
        try failing("cannot take LVM's lock on volume group \(group)") {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        let lock = try FileLock(directory: FilePath(directory), name: "V_\(group)", mode: .exclusive, timeout: lockTimeout,
                                 owner: "an LVM command", recordsHolder: false)
        return try withExtendedLifetime(lock) { try body() }
    }

    /// The live dm device at `number` that is not one of ours, if any: what `protect` adopts.
    func foreignDeviceMapperName(of number: DeviceNumber) throws -> DMName? {
        guard let listed = try dm.list().first(where: { $0.number == number }) else { return nil }
        guard let info = try dm.info(rawName: listed.name), !(info.uuid ?? "").hasPrefix(Layout.uuidPrefix) else { return nil }
        do { return try DMName(listed.name) } catch {
            throw SnapstackError(.refused, "cannot adopt \(listed.name.replacingNewlines)", why: "its device-mapper name is not one snapstack can handle: \(error)")
        }
    }

    /// Adopts the live dm device `live` (at `facts`) online, as protected device `name`.
    func adopt(devicePath: String, live: DMName, name: String, facts: BlockDeviceFacts, cbtBlock: Sectors?,
               metadataGroup: String?) throws -> DeviceSummary {
        guard let info = try dm.info(live), info.hasLiveTable else {
            throw SnapstackError(.refused, "cannot adopt \(devicePath)", why: "\(live.devicePath) has no active table")
        }
        guard !info.suspended else {
            throw SnapstackError(.refused, "cannot adopt \(devicePath)", why: "\(live.devicePath) is suspended",
                                 remedy: "find who suspended it (an LVM command still running?) and let it finish")
        }
        // LVM's own hidden layers (a snapshot's -real and -cow, a pool's data) carry its UUID
        // with a suffix: LVM reloads them as it likes.
        if let uuid = info.uuid, uuid.hasPrefix("LVM-"), uuid.utf8.count > 68 {
            throw SnapstackError(.refused, "cannot adopt \(devicePath)", why: "it is an internal layer of an LVM volume (\(uuid.replacingNewlines))",
                                 remedy: "protect the volume itself")
        }
        let table = try dm.table(live)
        if let (why, remedy) = Adoption.refusal(of: table, device: live.rawValue) {
            throw SnapstackError(.refused, "cannot adopt \(devicePath)", why: why, remedy: remedy)
        }
        if let holder = try liveDevices().first(where: { $0.holds.contains(facts.number) }) {
            throw SnapstackError(.refused, "cannot adopt \(devicePath)", why: "snapstack's own \(holder.info.name) is built on it",
                                 remedy: "protect a device that snapstack does not use for its own layers")
        }
        let identity = host.identity(of: facts.number, size: facts.size) ?? DeviceIdentity(size: facts.size)
        var record = newRecord(name: name, devicePath: devicePath, facts: facts, identity: identity, cbtBlock: cbtBlock,
                               metadataGroup: metadataGroup)
        record.adoptedName = live.rawValue
        record.adoptedUUID = info.uuid
        record.adoptedTable = table.description
        let id = record.id
        try database.insert(record)
        try reached(.protectRecorded)
        do {
            try run(try StackBuild.plan(record, newMetadata: true, withSnapshots: false), for: record, source: facts.number)
        } catch {
            throw rollingBack(error, [("remove the stack", { try self.removeStack(record) }),
                                      ("forget the device", { try self.database.deleteDevice(id: id) })])
        }
        record.state = .protected
        try database.update(record)
        event("protect", name, "adopted \(Adoption.displayName(live.rawValue, uuid: info.uuid)) (\(facts.number)) online")
        // / on a volume: LVM activates it with its plain table at every boot, so the initramfs
        // adopts it again before mounting it, when it can read the era metadata.
        if cbtBlock != nil, (try? host.usage(of: FilePath(devicePath)).mountPoints.contains("/")) == true {
            if metadataGroup == nil {
                notice("warning: / is on \(live.devicePath): with its change-tracking metadata in a file, the initramfs cannot adopt it at boot, so every reboot interrupts its change tracking; protect it with --cbt-metadata VG instead")
            } else {
                do { try prepareBootStack(record) } catch {
                    notice("warning: \(error); until the initramfs adopts \(live.devicePath) at boot, every reboot interrupts its change tracking: run `\(host.initramfsCommand)`")
                }
                // This boot's shutdown records / too (the first boot is not the initramfs's), on
                // the stop volume prepareBootStack made.
                prepareShutdownRecord(record)
            }
        }
        return try summary(of: record)
    }

    /// Whether `device`'s live device maps through its stack now.
    func trackingCheck(_ device: DeviceRecord) throws -> TrackingCheck {
        guard device.isAdopted, device.state == .protected else { return .inPlace }
        let live = try device.topName()
        guard try dm.info(live) != nil else { return .deviceAbsent }
        let table = try dm.table(live)
        if let real = try dm.info(try Layout.realName(device.name)), Adoption.mapsThroughStack(table, real: real.number) {
            return .inPlace
        }
        let why = table.description == device.adoptedTable
            ? "\(live.devicePath) did not map through its change tracking (the stack was not built: a reboot?)"
            : "\(live.devicePath) was reloaded by another program (lvextend, lvchange --refresh, pvmove?)"
        return .bypassed(table: table, why: why)
    }

    /// Adopts `device` again over its live device's current table `table`, after writes
    /// bypassed the tracking: records the interruption (an incremental from before it is
    /// refused), marks its snapshots invalid (origin writes bypassed their copy-on-write too),
    /// and rebuilds the stack under the live device at its new size. Idempotent: a crash part
    /// way leaves the live device bypassing the stack, and the next check does it again.
    func readopt(_ device: DeviceRecord, table: Table, why: String) throws {
        let live = try device.topName()
        if let (reason, remedy) = Adoption.refusal(of: table, device: live.rawValue) {
            throw SnapstackError(.refused, "cannot adopt \(live.devicePath) again", why: "its table changed: \(reason)",
                                 remedy: remedy ?? "unprotect \(device.name)")
        }
        var record = device
        try invalidateSnapshots(of: device, why: why)
        record.adoptedTable = table.description
        record.sizeBytes = Int64(table.size.rawValue * Sectors.size)
        // After a reboot LVM may have given the volume another minor number.
        if let number = try dm.info(live)?.number {
            record.sourceMajor = Int(number.major)
            record.sourceMinor = Int(number.minor)
        }
        // No era until the new stack has one: meanwhile every incremental is refused.
        record.interruptTracking(why)
        try database.update(record)
        // The layers first, then the interruption's era recorded, and only then the volume
        // switched over: a crash before the switch leaves it bypassing the stack, which the
        // next check adopts again; after it, the era is on record. Never the other way round,
        // which would leave the volume tracked with nothing saying that writes were missed.
        let steps = try StackBuild.plan(record, newMetadata: false, withSnapshots: false)
        let switchover = steps.firstIndex { if case .reloadLive = $0 { true } else { false } } ?? steps.endIndex
        let source = DeviceNumber(major: UInt32(record.sourceMajor), minor: UInt32(record.sourceMinor))
        try run(Array(steps[..<switchover]), for: record, source: source)
        // A new era starts here; every write the bypass let through is in an earlier one.
        record = try recordInterruptionEra(record)
        try run(Array(steps[switchover...]), for: record, source: source)
        event(TrackingEvent.interrupted, device.name, "change tracking interrupted: \(why); adopted again over its current table (\(record.sizeBytes) bytes)")
    }

    /// Adopts `device` again if its live device bypasses the stack: what every command that
    /// takes a snapshot of it does first, and the daemon on every change of it.
    func ensureAdopted(_ device: DeviceRecord) throws {
        if case .bypassed(let table, let why) = try trackingCheck(device) {
            try readopt(device, table: table, why: why)
        }
    }

    /// Refuses an incremental of `device` from `base` when writes may have gone unrecorded since.
    func checkTrackingContinuous(_ device: DeviceRecord, since base: ExportRecord) throws {
        // The initramfs built this stack at this boot, and nothing has judged yet whether the
        // tracking survived the reboot: the daemon's start does, as `reconcile` does.
        if earlyMarker(of: device) != nil {
            throw SnapstackError(.trackingInterrupted, "the change tracking of \(device.name) is not vouched for since this boot",
                                 why: "the initramfs built its stack, and no reconcile has checked the last shutdown's record yet",
                                 remedy: "start snapstack.service or run `snapstack reconcile`, then export again")
        }
        if case .bypassed(_, let why) = try trackingCheck(device) {
            throw SnapstackError(.trackingInterrupted, "change tracking of \(device.name) is interrupted", why: why,
                                 remedy: "an incremental would miss writes: take a full export, or add --allow-full to read every block")
        }
        // An interruption whose era is not recorded yet refuses every incremental.
        if device.trackingInterruptedAt != nil && device.trackingInterruptedEra == nil
            || device.trackingInterruptedEra.map({ (base.era ?? 0) < $0 }) == true {
            let when = device.trackingInterruptedAt.map { " at \($0.formatted(.iso8601))" } ?? ""
            throw SnapstackError(.trackingInterrupted, "change tracking of \(device.name) was interrupted\(when), after export \(base.id)",
                                 why: device.trackingInterruptedReason ?? "writes may have gone unrecorded",
                                 remedy: "an incremental would miss writes: take a full export, or add --allow-full to read every block")
        }
    }
}

/// An adopted device that was found bypassing its stack and adopted again.
public struct Readoption: Sendable, Equatable {
    public var name: String
    public var why: String
}

extension Orchestrator {
    /// For a change of the dm device `name` (udev `change`, which every resume of it sends,
    /// also LVM's activation of it at boot): when it is an adopted device that no longer maps
    /// through its stack, adopts it again, recording the interruption. nil when it is not
    /// adopted, or maps through its stack. By name, as LVM names a volume across reboots; its
    /// number may differ from boot to boot.
    public func readoptIfBypassed(dmName name: String) throws -> Readoption? {
        guard let device = try database.devices().first(where: { $0.adoptedName == name && $0.state == .protected }) else { return nil }
        guard case .bypassed(let table, let why) = try trackingCheck(device) else { return nil }
        try readopt(device, table: table, why: why)
        return Readoption(name: device.name, why: why)
    }
}
