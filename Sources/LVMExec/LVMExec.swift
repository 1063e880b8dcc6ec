import CLVM2Cmd
import Glibc

/// One LVM command run in this process through liblvm2cmd, for `snapstack lvm-exec`: the
/// parent (`LVMTool`) starts a process of its own binary for each command and reads what it
/// prints. liblvm2cmd is kept out of the parent because it acts on the whole process: its log
/// callback is process-global (libdevmapper's, which the parent has set to its own), it sets the
/// umask to 0077, raises the priority and locks memory while it has devices suspended, and it
/// is not safe to call from more than one thread — the daemon runs commands from several.
public enum LVMExec {
    /// Runs `words` (`["lvs", "--reportformat", "json", ...]`). The report (what libdm's
    /// reporter prints) goes to stdout, LVM's own messages at warning level and above to stderr;
    /// the exit status is 0 on success, else liblvm2cmd's code (2 no such command, 3 invalid
    /// parameters, 4 initialisation failed, 5 processing failed), 64 for words it cannot pass.
    public static func run(_ words: [String]) -> Int32 {
        // lvm2_run splits its one command line at white space and knows no quoting: a word
        // that holds any would become two, or be read as another option.
        guard !words.isEmpty, words.allSatisfy({ !$0.isEmpty && !$0.contains(where: { $0.isWhitespace || $0 == "\"" || $0 == "'" || $0 == "\\" }) }) else {
            emit("lvm-exec: every word must be non-empty, without white space, quotes or backslashes", to: STDERR_FILENO)
            return 64
        }
        lvm2_log_fn { level, file, _, _, message in
            guard let message, level > LVM2_LOG_SUPPRESS, level <= LVM2_LOG_PRINT else { return }
            let fromReporter = file.map { String(cString: $0).hasSuffix("libdm-report.c") } ?? false
            emit(String(cString: message), to: fromReporter ? STDOUT_FILENO : STDERR_FILENO)
        }
        guard let handle = lvm2_init() else {
            emit("lvm-exec: liblvm2cmd cannot initialise", to: STDERR_FILENO)
            return Int32(LVM2_INIT_FAILED)
        }
        // Monitoring is dmeventd's business for LVM's own volumes; a snapstack store is
        // watched by snapstack.
        lvm2_disable_dmeventd_monitoring(handle)
        let status = lvm2_run(handle, words.joined(separator: " "))
        lvm2_exit(handle)
        return status == LVM2_COMMAND_SUCCEEDED ? 0 : status
    }
}

/// A line, unbuffered: the parent reads both streams to their end.
private func emit(_ line: String, to descriptor: Int32) {
    let bytes = Array((line + "\n").utf8)
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        offset += written
    }
}
