import BlockIO
import Foundation
import SnapstackErrors

/// A volume group as LVM reports it.
public struct VolumeGroupFacts: Sendable, Equatable {
    public var name: String
    public var extentSize: Bytes
    public var free: Bytes
    /// Its physical volumes' device paths.
    public var physicalVolumes: [String]

    public init(name: String, extentSize: Bytes, free: Bytes, physicalVolumes: [String]) {
        self.name = name
        self.extentSize = extentSize
        self.free = free
        self.physicalVolumes = physicalVolumes
    }
}

/// A logical volume as LVM reports it.
public struct LogicalVolumeFacts: Sendable, Equatable {
    public var group: String
    public var name: String
    public var size: Bytes
    public var tags: [String]
    /// Held open (by a table of ours, a mount, a reader).
    public var open: Bool
    /// Its device while it is active.
    public var number: DeviceNumber?

    public init(group: String, name: String, size: Bytes, tags: [String], open: Bool, number: DeviceNumber?) {
        self.group = group
        self.name = name
        self.size = size
        self.tags = tags
        self.open = open
        self.number = number
    }

    /// `vg/lv`, as LVM's users name it.
    public var fullName: String { "\(group)/\(name)" }
    public var path: String { "/dev/\(group)/\(name)" }
}

/// LVM, the third part of the kernel seam: the volumes snapstack makes for itself (snapshot
/// stores). Creating, growing and removing are LVM's own commands, so that its metadata, locks,
/// archives and udev handling stay LVM's.
public protocol LogicalVolumes: Sendable {
    /// nil when there is no volume group of that name.
    func volumeGroup(named name: String) throws -> VolumeGroupFacts?
    /// Every logical volume carrying `tag`, in every volume group.
    func volumes(tagged tag: String) throws -> [LogicalVolumeFacts]
    /// A new active volume of at least `size` (whole extents) with `tag`, its start zeroed.
    func createVolume(group: String, name: String, size: Bytes, tag: String) throws
    /// Grows a volume to at least `size`; a volume already that large is left as it is.
    /// Returns its size now.
    func extendVolume(group: String, name: String, to size: Bytes) throws -> Bytes
    /// Removes a volume; one that does not exist is not an error.
    func removeVolume(group: String, name: String) throws
    /// Activates a volume (`/dev/<group>/<name>` appears); an active one is left as it is.
    func activateVolume(group: String, name: String) throws
}

/// LVM through liblvm2cmd, one command per child process (`snapstack lvm-exec`, see
/// `LVMExec`): reports are read as LVM's JSON, never as its column text.
public struct LVMTool: LogicalVolumes {
    /// The program whose `lvm-exec` verb runs a command: this very binary by default (the
    /// snapstack CLI and daemon); a program that embeds the library names the snapstack binary
    /// here or in `SNAPSTACK_LVM_EXEC`.
    public var executable: String

    public init(executable: String = ProcessInfo.processInfo.environment["SNAPSTACK_LVM_EXEC"] ?? "/proc/self/exe") {
        self.executable = executable
    }

    public func volumeGroup(named name: String) throws -> VolumeGroupFacts? {
        guard LVMNames.isValid(name) else { return nil }
        // A group that does not exist fails the command: a query of every group tells the two apart.
        let rows = try report("vgs", ["-o", "vg_name,vg_extent_size,vg_free,pv_name"], section: "vg")
        let mine = rows.filter { $0["vg_name"] == name }
        guard let first = mine.first else { return nil }
        return VolumeGroupFacts(name: name, extentSize: try bytes(first, "vg_extent_size"), free: try bytes(first, "vg_free"),
                                physicalVolumes: mine.compactMap { $0["pv_name"] }.filter { !$0.isEmpty })
    }

    public func volumes(tagged tag: String) throws -> [LogicalVolumeFacts] {
        try report("lvs", ["-o", "vg_name,lv_name,lv_size,lv_tags,lv_device_open,lv_kernel_major,lv_kernel_minor", "@\(tag)"],
                   section: "lv").map { row in
            let major = row["lv_kernel_major"].flatMap(UInt32.init), minor = row["lv_kernel_minor"].flatMap(UInt32.init)
            return LogicalVolumeFacts(group: row["vg_name"] ?? "", name: row["lv_name"] ?? "", size: try bytes(row, "lv_size"),
                                      tags: (row["lv_tags"] ?? "").split(separator: ",").map(String.init),
                                      open: row["lv_device_open"] == "open",
                                      number: major.flatMap { major in minor.map { DeviceNumber(major: major, minor: $0) } })
        }
    }

    public func createVolume(group: String, name: String, size: Bytes, tag: String) throws {
        // -Zy: dm-snapshot takes a store whose first chunk is zero for a new one.
        try command(["lvcreate", "-q", "-y", "-Zy", "-ay", "-n", name, "-L", "\(size.rawValue)b", "--addtag", tag, group],
                    "cannot create the logical volume \(group)/\(name)")
    }

    public func extendVolume(group: String, name: String, to size: Bytes) throws -> Bytes {
        guard let current = try volume(group: group, name: name) else {
            throw SnapstackError(.notFound, "cannot grow \(group)/\(name)", why: "LVM has no such volume of snapstack's")
        }
        guard current.size < size else { return current.size }
        try command(["lvextend", "-q", "-L", "\(size.rawValue)b", "\(group)/\(name)"], "cannot grow \(group)/\(name)")
        let extent = max(current.extentSize.rawValue, 1)
        return Bytes((size.rawValue + extent - 1) / extent * extent)
    }

    public func activateVolume(group: String, name: String) throws {
        try command(["lvchange", "-q", "-ay", "\(group)/\(name)"], "cannot activate \(group)/\(name)")
    }

    public func removeVolume(group: String, name: String) throws {
        guard try volume(group: group, name: name) != nil else { return }
        try command(["lvremove", "-q", "-y", "\(group)/\(name)"], "cannot remove \(group)/\(name)")
    }

    /// One of snapstack's volumes, found among its group's (one command: every LVM command
    /// costs a device scan, which a store growth under load cannot spare).
    private func volume(group: String, name: String) throws -> (size: Bytes, extentSize: Bytes)? {
        guard LVMNames.isValid(group), LVMNames.isValid(name) else { return nil }
        let rows = try report("lvs", ["-o", "lv_name,lv_size,lv_tags,vg_extent_size", group], section: "lv")
        guard let row = rows.first(where: { $0["lv_name"] == name }),
              (row["lv_tags"] ?? "").split(separator: ",").contains("snapstack") else { return nil }
        return (try bytes(row, "lv_size"), try bytes(row, "vg_extent_size"))
    }

    // MARK: Running commands

    private func run(_ words: [String]) throws -> ChildProcess {
        do { return try ChildProcess.run(executable, ["lvm-exec"] + words) } catch {
            throw SnapstackError(.failed, "cannot run LVM's \(words[0])", why: "\(error)", cause: error)
        }
    }

    private func command(_ words: [String], _ what: String) throws {
        let result = try run(words)
        guard result.status == 0 else {
            throw SnapstackError(.failed, what, why: LVMTool.reason(result))
        }
    }

    /// The rows of one section of a JSON report, every value a string (`--units b --nosuffix`).
    private func report(_ verb: String, _ arguments: [String], section: String) throws -> [[String: String]] {
        let result = try run([verb, "--reportformat", "json", "--units", "b", "--nosuffix"] + arguments)
        guard result.status == 0 else {
            throw SnapstackError(.failed, "LVM's \(verb) failed", why: LVMTool.reason(result))
        }
        return try LVMReport.rows(result.stdout, section: section)
    }

    private func bytes(_ row: [String: String], _ field: String) throws -> Bytes {
        guard let text = row[field], let value = UInt64(text) else {
            throw SnapstackError(.failed, "LVM reported \(field) as \(row[field] ?? "nothing")", why: "a byte count was expected")
        }
        return Bytes(value)
    }

    static func reason(_ result: ChildProcess) -> String {
        let lines = result.stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        return lines.isEmpty ? "LVM exited with status \(result.status)" : lines.joined(separator: "; ")
    }
}

/// LVM's JSON report: `{"report": [{"<section>": [{"field": "value", ...}, ...]}]}`.
enum LVMReport {
    static func rows(_ text: String, section: String) throws -> [[String: String]] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let reports = object["report"] as? [[String: Any]] else {
            throw SnapstackError(.failed, "LVM's report cannot be read", why: "it is not the JSON report expected: \(text.prefix(200))")
        }
        return reports.flatMap { ($0[section] as? [[String: Any]]) ?? [] }.map { row in
            row.compactMapValues { $0 as? String }
        }
    }
}

/// What LVM accepts as a volume group or logical volume name.
public enum LVMNames {
    public static func isValid(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 127 && !name.hasPrefix("-") && name != "." && name != ".."
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+_.-".contains($0)) }
    }
}
