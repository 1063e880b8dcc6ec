import BlockIO
import Foundation
import SystemPackage
import Testing

@Suite("Loop")
struct LoopTests {
    @Test("the index of a loop device's sysfs name", arguments: [
        ("loop0", 0), ("loop7", 7), ("loop10", 10), ("loop1048575", 1_048_575),
    ] as [(String, Int)])
    func index(name: String, expected: Int) {
        #expect(Loop.loopIndex(ofName: name) == expected)
    }

    @Test("other sysfs block names are not loop devices", arguments: [
        "loop", "loop-control", "loop0p1", "loop01", "loop-1", "loop+1", "loopa", "sda", "dm-0", "nloop0", "loop٣",
    ])
    func notIndex(name: String) {
        #expect(Loop.loopIndex(ofName: name) == nil)
    }

    @Test("attach of a missing file fails at its open, naming the file")
    func attachMissingFile() {
        #expect(throws: BlockIOError(path: "/nonexistent/snapstack.img", reason: .system(operation: "open", .noSuchFileOrDirectory))) {
            try Loop.attach(file: "/nonexistent/snapstack.img")
        }
    }

    @Test("detach and refreshCapacity refuse what is not a loop device", arguments: ["/dev/null", "/dev/zero"])
    func notALoopDevice(path: String) {
        #expect(throws: BlockIOError(path: path, reason: .notALoopDevice)) { try Loop.detach(path) }
        #expect(throws: BlockIOError(path: path, reason: .notALoopDevice)) { try Loop.refreshCapacity(path) }
    }

    @Test("detach of a missing node is an error, not a no-op")
    func detachMissingNode() {
        #expect(throws: BlockIOError(path: "/dev/snapstack-no-loop", reason: .system(operation: "open", .noSuchFileOrDirectory))) {
            try Loop.detach("/dev/snapstack-no-loop")
        }
    }

    @Test("all() lists the bound loop devices of a sysfs tree, by minor, and nothing else")
    func all() throws {
        try withTemporaryDirectory { root in
            // What the kernel shows: loopN/dev always; loopN/loop/backing_file only while bound.
            func device(_ name: String, dev: String, backing: String?) throws {
                let directory = root.string + "/block/" + name
                try FileManager.default.createDirectory(atPath: directory + "/loop", withIntermediateDirectories: true)
                try Data((dev + "\n").utf8).write(to: URL(fileURLWithPath: directory + "/dev"))
                if let backing { try Data((backing + "\n").utf8).write(to: URL(fileURLWithPath: directory + "/loop/backing_file")) }
            }
            try device("loop10", dev: "7:10", backing: "/var/lib/snapstack/a b.img")
            try device("loop2", dev: "7:2", backing: "/srv/disk.img (deleted)")
            try device("loop3", dev: "7:3", backing: nil) // unbound
            try device("loop2p1", dev: "259:0", backing: "/srv/disk.img") // a partition
            try device("sda", dev: "8:0", backing: nil)
            let found = try Loop.all(sysfs: root.string)
            #expect(found.map(\.path) == ["/dev/loop2", "/dev/loop10"])
            #expect(found.map(\.number) == [DeviceNumber(major: 7, minor: 2), DeviceNumber(major: 7, minor: 10)])
            #expect(found.map(\.backingFile) == ["/srv/disk.img (deleted)", "/var/lib/snapstack/a b.img"])

            // A dev attribute that is not MAJOR:MINOR is reported, not skipped.
            try device("loop4", dev: "garbage", backing: "/x.img")
            #expect(throws: BlockIOError(path: root.string + "/block/loop4/dev", reason: .unexpectedSysfs("garbage"))) {
                try Loop.all(sysfs: root.string)
            }
        }
    }

    @Test("all() of a tree without a block directory names the directory")
    func allWithoutBlock() throws {
        #expect(throws: BlockIOError(path: "/nonexistent-sysfs/block", reason: .system(operation: "opendir", .noSuchFileOrDirectory))) {
            try Loop.all(sysfs: "/nonexistent-sysfs")
        }
    }

    @Test("errors say which device and which call failed")
    func descriptions() {
        let busy = BlockIOError(path: "/dev/loop3", reason: .system(operation: "LOOP_CLR_FD", .resourceBusy))
        #expect(busy.errno == .resourceBusy)
        #expect("\(busy)".hasPrefix("/dev/loop3: LOOP_CLR_FD failed: "))
        let leftOver = BlockIOError(path: "/dev/loop4", reason: .system(operation: "LOOP_SET_STATUS64", .invalidArgument),
                                 leftOver: "LOOP_CLR_FD of /dev/loop4 failed: Device or resource busy")
        #expect("\(leftOver)".contains("undoing it failed too: LOOP_CLR_FD of /dev/loop4"))
        #expect(BlockIOError(path: "/dev/loop-control", reason: .noFreeLoopDevice(attempts: 8)).errno == nil)
    }
}
