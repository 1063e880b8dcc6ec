import BlockIO
import Foundation
internal import StateDatabase
import SystemPackage

/// Keeps LVM from using a protected physical volume anywhere but through its top device.
///
/// A protected disk that is an LVM PV shows the same PV label on the disk itself, the hidden
/// `-real` layer, the top device and every snapshot. LVM's commands scan every block device and,
/// among duplicates, prefer the name recorded in the VG metadata, which is the disk's: an LV
/// activated there writes past the change tracking and the snapshots' copy-on-write. Two
/// mechanisms close that, one per way LVM finds devices:
///
/// - Event activation (udev's 69-lvm.rules running `pvscan`) skips a device whose `ID_FS_TYPE`
///   is not `LVM2_member`: 61-snapstack.rules gives a member disk `ID_FS_TYPE=snapstack_member`
///   (the original kept in `SNAPSTACK_ID_FS_TYPE`); hidden layers already carry
///   `DM_UDEV_DISABLE_OTHER_RULES_FLAG`, which 69-lvm.rules honours.
/// - Commands (`vgchange -ay`, `pvs`) honour `devices/global_filter`. snapstack writes one into
///   `lvmlocal.conf`, which LVM reads before `lvm.conf` and which distributions ship empty, as a
///   fenced block it rewrites whenever the set of protected PVs changes: accept each top device,
///   reject every other device of ours and every name of each protected PV's disk (LVM accepts
///   a device if any of its names matches an accept pattern, so every name is rejected).
///
/// An administrator's own `global_filter` is never shadowed: then snapstack writes nothing and
/// says what to add (`LVMFilter.Outcome.adminFilter`).
enum LVMFilter {
    static let begin = "# BEGIN snapstack: protected LVM physical volumes are used only through their top device."
    static let end = "# END snapstack"

    /// A protected PV: its top device, and every name its disk has.
    struct Volume: Equatable {
        var top: String
        var diskNames: [String]
    }

    enum Outcome: Equatable {
        /// The block now says what `volumes` need (or is gone when none is left).
        case written
        case unchanged
        /// A `global_filter` of the administrator's is in force: these patterns must be put in
        /// front of it by hand.
        case adminFilter(patterns: [String])
    }

    /// The filter's patterns: tops accepted, the rest of ours and the disks' names rejected.
    static func patterns(_ volumes: [Volume]) -> [String] {
        func quoted(_ path: String) -> String {
            // LVM's regex dialect: escape what is special; `|` delimits the pattern.
            var out = ""
            for c in path {
                if "\\^$.|?*+()[]{}".contains(c) { out.append("\\") }
                out.append(c)
            }
            return out
        }
        var result = volumes.map { "a|^\(quoted($0.top))$|" }
        result.append("r|^/dev/mapper/\(quoted(Layout.namePrefix))|")
        for volume in volumes {
            for name in volume.diskNames { result.append("r|^\(quoted(name))$|") }
        }
        return result
    }

    /// The fenced block, or "" for no volumes.
    static func block(_ volumes: [Volume]) -> String {
        guard !volumes.isEmpty else { return "" }
        let list = patterns(volumes).map { "\"\($0.replacingOccurrences(of: "\"", with: "\\\""))\"" }.joined(separator: ", ")
        return """
            \(begin)
            # Rewritten by snapstack whenever a protected disk holding a PV is protected or unprotected.
            devices {
            \tglobal_filter = [ \(list) ]
            }
            \(end)

            """
    }

    /// `text` with its fenced block replaced by `block` (appended when there was none, removed
    /// when `block` is empty).
    static func replacingBlock(in text: String, with block: String) -> String {
        var lines = text.components(separatedBy: "\n")
        if let start = lines.firstIndex(of: begin), let stop = lines[start...].firstIndex(of: end) {
            var after = stop + 1
            if after < lines.count, lines[after].isEmpty { after += 1 }
            lines.removeSubrange(start..<after)
        }
        var result = lines.joined(separator: "\n")
        if text.hasSuffix("\n"), !result.isEmpty, !result.hasSuffix("\n") { result += "\n" }
        if !block.isEmpty {
            if !result.isEmpty, !result.hasSuffix("\n") { result += "\n" }
            result += block
        }
        return result
    }

    /// Whether `text` sets `global_filter` outside snapstack's block (a comment does not count).
    static func setsGlobalFilter(_ text: String) -> Bool {
        let outside = replacingBlock(in: text, with: "")
        return outside.split(separator: "\n").contains { line in
            let code = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            return code.trimmingCharacters(in: .whitespaces).hasPrefix("global_filter")
        }
    }
}

extension Orchestrator {
    /// Rewrites snapstack's block in `lvmlocal.conf` for the protected disks that are PVs now.
    /// Best effort for the caller: a failure is reported, never undoes a protect.
    @discardableResult
    func updateLVMFilter() throws -> LVMFilter.Outcome {
        let directory = host.lvmSystemDirectory
        var volumes: [LVMFilter.Volume] = []
        for device in try database.devices() where device.state == .protected && !device.isAdopted {
            let number = DeviceNumber(major: UInt32(device.sourceMajor), minor: UInt32(device.sourceMinor))
            guard host.hasLVMLabel(number) else { continue }
            let names = [device.sourcePath] + host.names(of: number)
            var seen = Set<String>()
            volumes.append(LVMFilter.Volume(top: try device.topName().devicePath, diskNames: names.filter { seen.insert($0).inserted }))
        }
        let local = directory + "/lvmlocal.conf"
        let current = (try? String(contentsOfFile: local, encoding: .utf8)) ?? ""
        let main = (try? String(contentsOfFile: directory + "/lvm.conf", encoding: .utf8)) ?? ""
        if !volumes.isEmpty, LVMFilter.setsGlobalFilter(main) || LVMFilter.setsGlobalFilter(current) {
            return .adminFilter(patterns: LVMFilter.patterns(volumes))
        }
        let updated = LVMFilter.replacingBlock(in: current, with: LVMFilter.block(volumes))
        guard updated != current else { return .unchanged }
        // LVM runs on its built-in defaults without a configuration directory; it reads the
        // directory's lvmlocal.conf once there is one.
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try AtomicFile.replace(FilePath(local), with: Array(updated.utf8), permissions: 0o644)
        return .written
    }

    /// `updateLVMFilter`, its outcome told to the person who asked.
    func refreshLVMFilter() {
        do {
            if case .adminFilter(let patterns) = try updateLVMFilter() {
                notice("warning: LVM could use a protected physical volume past its stack: \(host.lvmSystemDirectory) sets its own devices/global_filter; put these patterns in front of it: \(patterns.joined(separator: " "))")
            }
        } catch {
            notice("warning: cannot write snapstack's LVM filter into \(host.lvmSystemDirectory)/lvmlocal.conf: \(error)")
        }
    }
}
