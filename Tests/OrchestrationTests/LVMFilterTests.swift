import BlockIO
import DeviceMapper
import Foundation
import KernelSimulator
@testable import Snapstack
import Testing

/// The global_filter that keeps LVM on a protected PV's top device: its patterns, the fenced
/// block in lvmlocal.conf, and when the orchestrator rewrites it.
@Suite struct LVMFilterTests {
    @Test func topsAreAcceptedAndEveryOtherNameOfOursAndOfTheDisksRejected() {
        let patterns = LVMFilter.patterns([
            .init(top: "/dev/mapper/snapstack-pv0", diskNames: ["/dev/sdb", "/dev/block/8:16", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"]),
            .init(top: "/dev/mapper/snapstack-a.b", diskNames: ["/dev/loop0"]),
        ])
        #expect(patterns == [
            "a|^/dev/mapper/snapstack-pv0$|", "a|^/dev/mapper/snapstack-a\\.b$|", "r|^/dev/mapper/snapstack-|",
            "r|^/dev/sdb$|", "r|^/dev/block/8:16$|", "r|^/dev/disk/by-id/wwn-0x5000c500a1b2c3d4$|", "r|^/dev/loop0$|",
        ])
    }

    @Test func theBlockReplacesItselfAndGoesWhenNoVolumeIsLeft() {
        let shipped = "local {\n}\n"
        let block = LVMFilter.block([.init(top: "/dev/mapper/snapstack-pv0", diskNames: ["/dev/loop0"])])
        let once = LVMFilter.replacingBlock(in: shipped, with: block)
        #expect(once.hasPrefix(shipped))
        #expect(once.contains("global_filter = [ \"a|^/dev/mapper/snapstack-pv0$|\", \"r|^/dev/mapper/snapstack-|\", \"r|^/dev/loop0$|\" ]"))
        #expect(LVMFilter.replacingBlock(in: once, with: block) == once)
        let other = LVMFilter.block([.init(top: "/dev/mapper/snapstack-pv1", diskNames: ["/dev/loop1"])])
        let twice = LVMFilter.replacingBlock(in: once, with: other)
        #expect(!twice.contains("pv0") && twice.contains("pv1"))
        #expect(LVMFilter.replacingBlock(in: twice, with: "") == shipped)
    }

    @Test func anAdministratorsFilterIsSeenButCommentsAndOurOwnBlockAreNot() {
        #expect(LVMFilter.setsGlobalFilter("devices {\n\tglobal_filter = [ \"r|/dev/sdz|\" ]\n}\n"))
        #expect(!LVMFilter.setsGlobalFilter("devices {\n\t# global_filter = [ \"a|.*|\" ]\n}\n"))
        let ours = LVMFilter.block([.init(top: "/dev/mapper/snapstack-pv0", diskNames: ["/dev/loop0"])])
        #expect(!LVMFilter.setsGlobalFilter("local {\n}\n" + ours))
    }

    /// A lab whose host has an LVM configuration (the simulator's own directory).
    func lab(lvmConf: String = "devices {\n\t# global_filter = [ \"a|.*|\" ]\n}\n") throws -> (SimulatedLab, String) {
        let lab = try SimulatedLab()
        let directory = lab.kernel.lvmSystemDirectory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try lvmConf.write(toFile: directory + "/lvm.conf", atomically: true, encoding: .utf8)
        try "local {\n}\n".write(toFile: directory + "/lvmlocal.conf", atomically: true, encoding: .utf8)
        return (lab, directory + "/lvmlocal.conf")
    }

    @Test func protectingAPhysicalVolumeWritesTheFilterAndUnprotectRemovesIt() throws {
        let (lab, local) = try lab()
        lab.kernel.makePhysicalVolume("/dev/sdb", links: ["/dev/disk/by-id/wwn-0x1"])
        try lab.protect(2)
        let text = try String(contentsOfFile: local, encoding: .utf8)
        #expect(text.contains("\"a|^/dev/mapper/snapstack-vol1$|\""))
        #expect(text.contains("\"r|^/dev/sdb$|\"") && text.contains("\"r|^/dev/disk/by-id/wwn-0x1$|\"") && text.contains("\"r|^/dev/block/8:16$|\""))
        // The disk that is no PV is not named.
        #expect(!text.contains("vol0") && !text.contains("/dev/sda"))
        try lab.orchestrator().unprotect(name: "vol1")
        #expect(try String(contentsOfFile: local, encoding: .utf8) == "local {\n}\n")
    }

    @Test func anAdministratorsFilterIsNeverShadowed() throws {
        let (lab, local) = try lab(lvmConf: "devices {\n\tglobal_filter = [ \"r|/dev/sdz|\" ]\n}\n")
        lab.kernel.makePhysicalVolume("/dev/sda")
        try lab.protect(1)
        #expect(try String(contentsOfFile: local, encoding: .utf8) == "local {\n}\n")
        guard case .adminFilter(let patterns) = try lab.orchestrator().updateLVMFilter() else {
            Issue.record("the administrator's filter was not reported"); return
        }
        #expect(patterns.first == "a|^/dev/mapper/snapstack-vol0$|")
    }
}
