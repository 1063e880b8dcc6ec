import BlockIO
import DeviceMapper
import Foundation

/// A protected disk that is an LVM physical volume: LVM must use it only through the top
/// device. Witnesses: dmsetup deps of the LV, pvs/vgs and their stderr (LVM warns about every
/// duplicate PV it sees), udev's properties of the disk, era_invalidate through `changes`.
enum PhysicalVolumeScenarios {
    static let all: [Scenario] = [
        Scenario("a protected PV: udev hides it from event activation, vgchange -ay maps its LV over the top device, pvs/vgs see no duplicate, writes to the LV show in changes; unprotect removes the LVM filter",
                 protectedPV).lasting(90),
    ]

    typealias CLI = OrchestratorScenarios.CLI

    static func protectedPV(_ lab: Lab) throws {
        let cli = CLI(lab)
        let rules = try DaemonScenarios.Rules(lab, state: cli.state)
        defer { withExtendedLifetime(rules) {} }
        let lvmlocal = "/etc/lvm/lvmlocal.conf"
        let before = (try? String(contentsOfFile: lvmlocal, encoding: .utf8))
        try AdoptionScenarios.withVolumeGroup(lab, "pvvg", pvSizes: [.mebibytes(192)]) { vg in
            vg.cli = cli
            let pv = vg.pvs[0].path
            _ = try vg.createLV("data", size: "64M")
            // LVM's event activation can map the LV again behind `vgchange -an` (a change event
            // of the PV, after its last writer closed it, is handled later than `udevadm settle`
            // returns): deactivate until the PV has stayed free for a second.
            let holders = "/sys/class/block/\((pv as NSString).lastPathComponent)/holders"
            var free = 0
            for _ in 0..<40 where free < 4 {
                if ((try? FileManager.default.contentsOfDirectory(atPath: holders)) ?? []).isEmpty {
                    free += 1
                } else {
                    try vg.lvm(["vgchange", "-q", "-an", vg.name])
                    free = 0
                }
                try lab.sh("udevadm", "settle")
                usleep(250_000)
            }
            try expect(free >= 4, "\(pv) is still held after vgchange -an: \((try? FileManager.default.contentsOfDirectory(atPath: holders)) ?? [])")

            try cli.ok("protect", pv, "--name", "pv0")
            let top = try AdoptionScenarios.number(lab, "snapstack-pv0")
            try lab.sh("udevadm", "settle")
            let udev = try lab.sh("udevadm", "info", "--query=property", pv)
            try expect(udev.contains("ID_FS_TYPE=snapstack_member") && udev.contains("SNAPSTACK_ID_FS_TYPE=LVM2_member"),
                       "udev's properties of the protected PV disk: \(udev)")
            let filter = try String(contentsOfFile: lvmlocal, encoding: .utf8)
            try expect(filter.contains("\"a|^/dev/mapper/snapstack-pv0$|\"") && filter.contains("\"r|^\(pv)$|\""),
                       "lvmlocal.conf names the top and rejects the disk: \(filter)")

            let activation = try vg.lvmRun(["vgchange", "-ay", vg.name], allowFailure: false)
            try expect(!activation.stderr.contains("WARNING"), "vgchange -ay warned: \(activation.stderr)")
            let deps = try lab.sh("dmsetup", "deps", "-o", "devno", "pvvg-data")
            try expect(deps.contains("(\(top.replacingOccurrences(of: ":", with: ", ")))"),
                       "pvvg-data must map over the top device \(top): dmsetup deps says \(deps)")

            try cli.ok("snapshot", "pv0", "--as", "s1", "--size", "32M")
            let era = try AdoptionScenarios.snapshotRow(cli, "pv0-s1")["era"] as? Int ?? -1
            for command in [["pvs"], ["vgs"], ["lvs"]] {
                let result = try vg.lvmRun(command, allowFailure: false)
                try expect(!result.stderr.contains("WARNING") && !result.stderr.contains("uplicate"),
                           "\(command[0]) with a snapshot of the PV warned: \(result.stderr)")
                if command == ["pvs"] {
                    try expect(result.stdout.contains("/dev/mapper/snapstack-pv0") && !result.stdout.contains(pv),
                               "pvs must show the PV on the top device only: \(result.stdout)")
                }
            }
            // 3 MiB written through the LV at 10 MiB: the data area starts 1 MiB into the PV.
            try lab.writeRandom("/dev/pvvg/data", offset: .mebibytes(10), length: .mebibytes(3))
            let changes = try cli.ok("changes", "pv0", "--since", "\(era)", "-o", "offset,length", "--units", "b", "--nosuffix", "--noheadings")
            let rows = changes.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
            try expect(rows.contains { $0.count == 2 && (UInt64($0[0]) ?? .max) <= 11 << 20 && (UInt64($0[0]) ?? 0) + (UInt64($0[1]) ?? 0) >= 14 << 20 },
                       "changes since the snapshot must cover the LV's 3 MiB at 11 MiB of the PV: \(changes)")

            try vg.lvm(["vgchange", "-q", "-an", vg.name])
            try cli.ok("drop", "pv0-s1")
            try cli.ok("unprotect", "pv0")
            let after = (try? String(contentsOfFile: lvmlocal, encoding: .utf8))
            try expect(!(after ?? "").contains("BEGIN snapstack"), "unprotect left the LVM filter: \(after ?? "")")
            try expectEqual(after ?? "", before ?? "", "lvmlocal.conf after unprotect")
        }
    }
}
