import BlockIO
import Foundation
import KernelSimulator
@testable import Snapstack
import SnapstackErrors
import Testing

/// Where era metadata files may live: dm-era fails the origin's own writes when it cannot
/// commit, so the metadata file must never need a new block after protect made it.
@Suite struct MetadataFileSystemTests {
    @Test("on a file system that allocates anew for every write (zfs, bcachefs) protect is refused with the way around it, changing nothing",
          arguments: [FileSystemType.zfs, .bcachefs])
    func alwaysCopyOnWriteRefused(_ type: FileSystemType) throws {
        let lab = try SimulatedLab()
        lab.kernel.setFileSystem(type)
        let before = try lab.picture()
        let error = #expect(throws: SnapstackError.self) {
            try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0")
        }
        #expect(error?.kind == .refused)
        #expect("\(error.map { "\($0)" } ?? "")".contains("it is on \(type)"))
        #expect(error?.remedy?.contains("--cbt-metadata VG") == true)
        #expect(try lab.picture() == before)
    }

    @Test("where the file system does not overwrite in place the metadata file's blocks are reserved; where it does, written",
          arguments: [(FileSystemType.btrfs, true), (.tmpfs, true), (.ext4, false), (.xfs, false)])
    func metadataBlocksAreNeverLeftToAllocateLater(_ type: FileSystemType, reserved: Bool) throws {
        let lab = try SimulatedLab()
        lab.kernel.setFileSystem(type)
        try lab.orchestrator().protect(devicePath: SimulatedLab.disks[0], name: "vol0")
        let metadata = lab.files().filter { $0.hasPrefix("cbt/") && $0.hasSuffix(".era") }
        #expect(metadata.count == 1)
        let preallocated = lab.kernel.capture().preallocatedFiles.filter { $0.hasSuffix(".era") }
        #expect(preallocated.count == (reserved ? 1 : 0), "\(type): \(preallocated)")
    }
}
