import BlockIO
import Foundation
import Snapstack
import Testing

/// The auto-protect policy's udev rules hide a disk from its first event and keep it hidden
/// (udev's database) until it is released: an unprotected disk must be, or it stays hidden
/// from every mounter after its stack is gone.
@Suite struct PolicyReleaseTests {
    @Test func unprotectReleasesTheDiskAndWithdrawsItsMember() throws {
        let lab = try SimulatedLab()
        try lab.protect()
        let run = lab.kernel.runtimeDirectory
        #expect(FileManager.default.fileExists(atPath: run + "/members/8:0"))
        #expect(!FileManager.default.fileExists(atPath: run + "/released/8:0"))
        try lab.orchestrator().unprotect(name: "vol0")
        #expect(!FileManager.default.fileExists(atPath: run + "/members/8:0"))
        #expect(FileManager.default.fileExists(atPath: run + "/released/8:0"))
        // A later protect hides it again by its member marker, whatever the release says.
        try lab.protect()
        #expect(FileManager.default.fileExists(atPath: run + "/members/8:0"))
    }

    /// Unprotected while its disk is unplugged: no release marker, or the disk plugged next
    /// under that number would escape the policy's hiding.
    @Test func unprotectOfAnUnpluggedDiskLeavesNoReleaseMarker() throws {
        let lab = try SimulatedLab()
        try lab.protect()
        try lab.orchestrator().tearDownVanished(DeviceNumber(major: 8, minor: 0))
        lab.kernel.unplug("/dev/sda")
        try lab.orchestrator().unprotect(name: "vol0")
        #expect(!FileManager.default.fileExists(atPath: lab.kernel.runtimeDirectory + "/released/8:0"))
    }

    @Test func releaseMarkersAreForgottenOneOrAll() throws {
        let run = FileManager.default.temporaryDirectory.appendingPathComponent("snapstack-released-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: run) }
        var triggered: [DeviceNumber] = []
        let disk = DeviceNumber(major: 252, minor: 16), other = DeviceNumber(major: 252, minor: 32)
        ReleasedMarkers.release(disk, runtime: run) { triggered.append($0); return true }
        ReleasedMarkers.release(other, runtime: run) { triggered.append($0); return true }
        // A device that is gone keeps no marker: a disk given its number later is hidden.
        ReleasedMarkers.release(DeviceNumber(major: 252, minor: 48), runtime: run) { _ in false }
        #expect(triggered.prefix(1) == [disk])
        #expect(try FileManager.default.contentsOfDirectory(atPath: run + "/released").sorted() == ["252:16", "252:32"])
        ReleasedMarkers.forget(disk, runtime: run)
        #expect(try FileManager.default.contentsOfDirectory(atPath: run + "/released") == ["252:32"])
        ReleasedMarkers.forgetAll(runtime: run)
        #expect(!FileManager.default.fileExists(atPath: run + "/released"))
    }
}
