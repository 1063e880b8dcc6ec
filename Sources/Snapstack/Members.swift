import BlockIO
import Foundation
internal import StateDatabase
import SystemPackage
import Udev

/// Markers that tell snapstack's udev rules (udev-rules/61-snapstack.rules) that a block device
/// is a protected disk, so that they hide it (`SYSTEMD_READY=0`, `UDISKS_IGNORE=1`, its by-uuid
/// and by-label links ranked below the top device's) and only the top device gets mounted. A rule can only afford a file test:
/// it runs for every block event, in udev's worker, and must never block udev.
///
/// - `/run/snapstack/members/MAJ:MIN` names the device a stack is built over now. It is exact
///   and always readable from early boot (tmpfs), but gone after a reboot.
/// - `STATE/members/KEY` names the device by the strongest identity the rule can compute from
///   udev's properties and sysfs: `partuuid-<ID_PART_ENTRY_UUID>`, or `wwn-<wwn>-<sectors>`,
///   `serial-<ID_SERIAL>-<sectors>`, `fsuuid-<ID_FS_UUID>-<sectors>`. It persists, so a
///   protected disk is hidden from the first coldplug after a reboot or a re-plug, before the
///   daemon rebuilds its stack — when the state directory is on the root filesystem, as the
///   default /var/lib/snapstack is; where /var is mounted later, the daemon's boot-time pass
///   re-triggers the members once their stacks exist.
///
/// Each marker holds the device's id, so that it is withdrawn with the device.
enum MemberMarkers {

    static func persistentDirectory(_ state: FilePath) -> String { state.appending("members").string }

    /// The persistent marker's name for a record, from its strongest identifier (the order of
    /// `DeviceIdentity.matches`); nil for a device with no identity but its number.
    static func persistentName(_ device: DeviceRecord) -> String? {
        let sectors = UInt64(device.sizeBytes) / Sectors.size
        let name: String?
        if let partUUID = device.partUUID { name = "partuuid-\(partUUID)" }
        else if let wwn = device.wwn { name = "wwn-\(wwn)-\(sectors)" }
        else if let serial = device.serial { name = "serial-\(serial)-\(sectors)" }
        else if let fsUUID = device.fsUUID { name = "fsuuid-\(fsUUID)-\(sectors)" }
        else { name = nil }
        // udev's values are already free of slashes and whitespace; a name that is not a
        // plain file name is not written rather than written somewhere else.
        guard let name, !name.contains("/"), !name.contains("\0"), name.utf8.count < 250 else { return nil }
        return name
    }

    static func write(_ path: String, _ content: String) {
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                 withIntermediateDirectories: true)
        try? Data((content + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// Removes the markers in `directory` that hold `id`.
    static func remove(id: String, in directory: String) {
        for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let path = directory + "/" + file
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
               text.trimmingCharacters(in: .whitespacesAndNewlines) == id {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
    }
}

/// Devices the auto-protect policy's udev rules hid at their first event (`Policy.udevRules`)
/// and snapstack then left alone: `RUNTIME/released/MAJ:MIN`, which the compiled rules test
/// before they tag a device again. A marker goes when its device goes (the daemon removes it
/// at the device's `remove`, and clears them all when it starts: it looks at every present
/// device then), so that a later disk given the same number is not taken for it.
public enum ReleasedMarkers {
    public static func directory(runtime: String) -> String { runtime + "/released" }

    /// Marks `number` released and asks udev to run its rules for it and its partitions again,
    /// which shows them to mounters. Best effort, as the member markers. No marker is left for
    /// a device that is gone (`trigger` says so): the next disk given its number must be hidden.
    public static func release(_ number: DeviceNumber, runtime: String, trigger: (DeviceNumber) -> Bool) {
        let marker = directory(runtime: runtime) + "/\(number)"
        MemberMarkers.write(marker, "released")
        guard trigger(number) else {
            try? FileManager.default.removeItem(atPath: marker)
            return
        }
        for partition in UdevContext.partitions(of: number) { _ = trigger(partition) }
    }

    public static func forget(_ number: DeviceNumber, runtime: String) {
        try? FileManager.default.removeItem(atPath: directory(runtime: runtime) + "/\(number)")
    }

    public static func forgetAll(runtime: String) {
        try? FileManager.default.removeItem(atPath: directory(runtime: runtime))
    }
}

extension Orchestrator {
    /// Marks `source` as the disk under `device`'s stack and asks udev to run its rules for it
    /// again, so that the disk yields its by-uuid link to the top device. Best effort: a marker
    /// that cannot be written costs the hiding, never the stack.
    func publishMember(_ device: DeviceRecord, source: DeviceNumber) {
        MemberMarkers.remove(id: device.id, in: memberMarkersDirectory)
        MemberMarkers.write(memberMarkersDirectory + "/\(source)", device.id)
        if let name = MemberMarkers.persistentName(device) {
            MemberMarkers.write(MemberMarkers.persistentDirectory(stateDirectory) + "/" + name, device.id)
        }
        host.trigger(source)
    }

    /// Withdraws `device`'s markers: the runtime one always, the persistent one too unless the
    /// device stays protected (`keepPersistent`, when its disk went away). The disk, if still
    /// there, is shown to udev again — released, too, from the auto-protect policy's hiding,
    /// which would otherwise hold it from the event that first hid it.
    func withdrawMember(_ device: DeviceRecord, keepPersistent: Bool = false) {
        MemberMarkers.remove(id: device.id, in: memberMarkersDirectory)
        if !keepPersistent {
            MemberMarkers.remove(id: device.id, in: MemberMarkers.persistentDirectory(stateDirectory))
            ReleasedMarkers.release(DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor)),
                                    runtime: host.runtimeDirectory, trigger: host.trigger)
        }
    }

    /// Rewrites the markers of every protected device whose stack is live, and re-triggers its
    /// disk: what the daemon does at start, so that members are hidden even where the
    /// persistent markers were not readable at coldplug.
    public func republishMembers() throws -> Int {
        var count = 0
        for device in try database.devices() where device.state == .protected && !device.isAdopted {
            guard try dm.info(try Layout.realName(device.name)) != nil else { continue }
            publishMember(device, source: DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor)))
            count += 1
        }
        return count
    }
}
