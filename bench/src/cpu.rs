//! CPU time by process over a run, read from /proc: the fleet (its child process, or
//! its worker processes), the Postgres processes serving the fleet's database (and the
//! server's own background processes), RabbitMQ, a Qdrant server when one runs here,
//! and this benchmark's own client side. Divided by the jobs of the run, it says where
//! each job's machine time went.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of /proc's utime and stime (USER_HZ; 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Who a process is, for the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Fleet,
    Postgres,
    RabbitMq,
    Qdrant,
    Bench,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Fleet,
        Role::Postgres,
        Role::RabbitMq,
        Role::Qdrant,
        Role::Bench,
    ];
}

/// CPU seconds per process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    seconds: HashMap<u32, (Role, f64)>,
}

/// What is being measured: the fleet's processes and its database's name.
#[derive(Debug, Clone)]
pub struct Scope {
    pub fleet_pids: Vec<u32>,
    pub database: String,
}

impl Scope {
    /// Reads every process of interest now.
    pub fn snapshot(&self) -> Snapshot {
        let mut seconds = HashMap::new();
        let me = std::process::id();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Snapshot { seconds };
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(role) = self.role(pid, me) else {
                continue;
            };
            if let Some(cpu) = cpu_seconds(pid) {
                seconds.insert(pid, (role, cpu));
            }
        }
        Snapshot { seconds }
    }

    fn role(&self, pid: u32, me: u32) -> Option<Role> {
        if pid == me {
            return Some(Role::Bench);
        }
        if self.fleet_pids.contains(&pid) {
            return Some(Role::Fleet);
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        match comm.trim() {
            "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd" => Some(Role::RabbitMq),
            "qdrant" => Some(Role::Qdrant),
            "postgres" => {
                // Backends name their database in their title; the server's own
                // processes (WAL writer, checkpointer, …) serve every database, ours too.
                let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
                let title = cmdline.replace('\0', " ");
                let backend = title.contains("127.0.0.1(") || title.contains("[local]");
                (!backend || title.contains(&format!(" {} ", self.database)))
                    .then_some(Role::Postgres)
            }
            _ => None,
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// CPU seconds per role between two snapshots (a process that started meanwhile
/// counts whole; one that ended meanwhile is missed).
pub fn between(before: &Snapshot, after: &Snapshot) -> HashMap<Role, f64> {
    let mut used: HashMap<Role, f64> = HashMap::new();
    for (pid, (role, end)) in &after.seconds {
        let start = before.seconds.get(pid).map_or(0.0, |(_, s)| *s);
        *used.entry(*role).or_default() += (end - start).max(0.0);
    }
    used
}
