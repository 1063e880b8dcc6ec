import Foundation
@testable import Snapstack
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The programs snapstack runs (LVM's helper, restic, modprobe): spawned and reaped without a
/// run loop, both streams captured, the exit status or the ending signal reported.
@Suite struct ChildProcessTests {
    @Test("stdout, stderr and the exit status come back")
    func outputAndStatus() throws {
        let child = try ChildProcess.run("/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
        #expect(child.status == 3)
        #expect(child.stdout == "out\n")
        #expect(child.stderr == "err\n")
    }

    @Test("a program ended by a signal reports 128 + its number")
    func signalStatus() throws {
        #expect(try ChildProcess.run("/bin/sh", ["-c", "kill -TERM $$"]).status == 128 + SIGTERM)
    }

    @Test("a program that fills both pipes does not stall")
    func largeOutput() throws {
        let child = try ChildProcess.run("/bin/sh", ["-c", "head -c 1000000 /dev/zero; head -c 300000 /dev/zero >&2"])
        #expect(child.status == 0)
        #expect(child.stdout.utf8.count == 1_000_000)
        #expect(child.stderr.utf8.count == 300_000)
    }

    @Test("a missing program is an error, not a status")
    func missingProgram() {
        #expect(throws: Errno.noSuchFileOrDirectory) { try ChildProcess.run("/nonexistent/program", []) }
    }

    @Test("the child starts with no signal blocked and no input, whatever this process blocks")
    func cleanSignalMaskAndInput() throws {
        var set = sigset_t(), old = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let child = try ChildProcess.run("/bin/sh", ["-c", "grep ^SigBlk: /proc/self/status; cat"])
        #expect(child.stdout == "SigBlk:\t0000000000000000\n")
    }

    @Test("no descriptor of this process leaks into the child beyond its three streams")
    func noLeakedDescriptors() throws {
        let child = try ChildProcess.run("/bin/sh", ["-c", "ls /proc/self/fd"])
        // 0, 1, 2 and the descriptor ls opens to read the directory.
        #expect(child.stdout.split(separator: "\n").count == 4, "\(child.stdout)")
    }
}
