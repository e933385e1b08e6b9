//! Tenant identity and the ONLY code that turns a tenant into a storage location.
//!
//! Every collection name, payload partition and point id is derived here, so the
//! isolation rule (DESIGN.md rule 2: no two distinct `(tenant, database)` pairs may
//! share a collection or a partition) is proven in one place and tested in one place.
//!
//! Collection names are built from length-prefixed components, which makes the
//! mapping injective for *any* strings, not only for the ones our validation admits:
//! `{fleet}_c{len(tenant)}_{tenant}_{database}` can be parsed back unambiguously,
//! because the length says exactly where the tenant ends. The original plan's
//! `f"tenant_{user}_{db}".replace("-", "_")` mapped `("a-b", "c")` and `("a_b", "c")`
//! and `("a", "b_c")` to the same name.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest tenant id or database name we accept. Short enough that a collection
/// name (fleet prefix + two ids + markers) stays far below Qdrant's 255-byte limit.
pub const MAX_ID_LEN: usize = 63;

/// Why an identifier was refused at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error(
        "may contain only lowercase ASCII letters, digits, '-' and '_', and must start with a letter or digit"
    )]
    BadCharacter,
}

fn validate_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let mut chars = raw.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(IdError::BadCharacter)
    }
}

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parse an identifier from outside; the only way to make one.
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                validate_id(raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(|e| serde::de::Error::custom(format!("{}: {e}", stringify!($name))))
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_newtype!(
    /// A tenant's identifier: `[a-z0-9][a-z0-9_-]{0,62}`.
    TenantId
);
id_newtype!(
    /// A tenant's database (a namespace of documents within the tenant): same shape as a tenant id.
    DatabaseName
);

impl DatabaseName {
    pub fn default_name() -> Self {
        Self("default".to_owned())
    }
}

impl TenantId {
    /// A fresh id for a tenant created without one: `t-` and 16 hex digits.
    pub fn generate() -> Self {
        let raw = Uuid::new_v4().simple().to_string();
        Self(format!("t-{}", &raw[..16]))
    }
}

/// How a tenant's points are separated from other tenants' points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// A collection per tenant and database: the strongest separation.
    Collection,
    /// One shared collection per database, partitioned on an `is_tenant` keyword
    /// index of `tenant_id`: Qdrant's recommended layout for many small tenants.
    Partition,
}

impl IsolationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collection => "collection",
            Self::Partition => "partition",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "collection" => Some(Self::Collection),
            "partition" => Some(Self::Partition),
            _ => None,
        }
    }
}

/// Payload key holding the owning tenant on every point (the second wall).
pub const TENANT_KEY: &str = "tenant_id";
/// Payload key holding the document a point was cut from.
pub const DOCUMENT_KEY: &str = "document_id";
/// Payload key holding the database inside the tenant.
pub const DATABASE_KEY: &str = "database";
/// Payload key holding the chunk's index within its document.
pub const CHUNK_INDEX_KEY: &str = "chunk_index";
/// Payload key holding the chunk's text.
pub const TEXT_KEY: &str = "text";
/// Payload key holding the caller's metadata object.
pub const METADATA_KEY: &str = "metadata";

/// Where one tenant's points for one database live. Constructed only by
/// [`Namespace::new`], so every caller gets the same, injective naming.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// Qdrant collection holding the points.
    pub collection: String,
    /// Owner; every read and write is filtered on it, in both modes.
    pub tenant: TenantId,
    pub database: DatabaseName,
    pub mode: IsolationMode,
}

impl Namespace {
    /// `fleet` is the fleet's prefix (TENANTRY_QUEUE_PREFIX), so two fleets can share a
    /// Qdrant server without meeting. It is operator-chosen, never tenant-chosen.
    pub fn new(
        fleet: &str,
        tenant: &TenantId,
        database: &DatabaseName,
        mode: IsolationMode,
    ) -> Self {
        let collection = match mode {
            IsolationMode::Collection => collection_name(fleet, tenant, database),
            IsolationMode::Partition => partition_collection_name(fleet, database),
        };
        Self {
            collection,
            tenant: tenant.clone(),
            database: database.clone(),
            mode,
        }
    }

    /// Whether this namespace shares its collection with other tenants.
    pub fn is_shared(&self) -> bool {
        self.mode == IsolationMode::Partition
    }
}

/// Name of the collection owned by one `(tenant, database)` in collection mode.
///
/// `{fleet}_c{len(tenant)}_{tenant}_{database}`: the tenant's length tells where it
/// ends, so the name decodes to exactly one pair. The `c` marker keeps these apart
/// from the shared partition collections (`p`).
pub fn collection_name(fleet: &str, tenant: &TenantId, database: &DatabaseName) -> String {
    format!(
        "{}_c{}_{}_{}",
        fleet_component(fleet),
        tenant.as_str().len(),
        tenant.as_str(),
        database.as_str()
    )
}

/// Name of the shared collection of one database name in partition mode:
/// `{fleet}_p_{database}`. Tenants inside it are told apart by the `tenant_id`
/// payload partition, never by the name.
pub fn partition_collection_name(fleet: &str, database: &DatabaseName) -> String {
    format!("{}_p_{}", fleet_component(fleet), database.as_str())
}

/// What every collection name of `fleet` (both modes) starts with, and no other fleet's
/// does: for removing a whole fleet's collections (benchmarks, tests).
pub fn fleet_collection_prefix(fleet: &str) -> String {
    format!("{}_", fleet_component(fleet))
}

/// The fleet prefix as it appears in collection names: length-prefixed too, so that
/// prefixes containing `_c…` or `_p_` cannot make two fleets' names meet. A prefix of only
/// letters, digits, `-` and `_` appears as itself (`f{len}_{prefix}`); any other (a `.` is
/// a valid queue prefix) is hex-encoded (`h{len}_{hex}`), so that, say, `a.b` and `a-b`
/// stay two fleets instead of meeting at `a-b`.
fn fleet_component(fleet: &str) -> String {
    let plain = fleet
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        format!("f{}_{}", fleet.len(), fleet)
    } else {
        let hex = hex::encode(fleet.as_bytes());
        format!("h{}_{}", hex.len(), hex)
    }
}

/// Namespace of the UUIDv5 point ids. Fixed forever: changing it would orphan points.
const POINT_ID_NAMESPACE: Uuid = Uuid::from_bytes([
    0x6b, 0x1e, 0x4f, 0x0a, 0x93, 0x2c, 0x4d, 0x51, 0xa8, 0x07, 0x3e, 0x62, 0x1d, 0xc4, 0x55, 0x90,
]);

/// Deterministic id of one chunk's point: UUIDv5 over tenant, document, chunk index
/// and embedding model, so a redelivered job overwrites its points instead of doubling them.
/// Components are length-prefixed for the same injectivity reason as collection names.
pub fn point_id(tenant: &TenantId, document: Uuid, chunk_index: u32, model: &str) -> Uuid {
    let name = format!(
        "{}:{}|{}|{}|{}:{}",
        tenant.as_str().len(),
        tenant.as_str(),
        document,
        chunk_index,
        model.len(),
        model
    );
    Uuid::new_v5(&POINT_ID_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::parse(s).expect("valid tenant id")
    }
    fn d(s: &str) -> DatabaseName {
        DatabaseName::parse(s).expect("valid database name")
    }

    #[test]
    fn ids_are_validated() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("a-b_c9").is_ok());
        assert_eq!(TenantId::parse(""), Err(IdError::Empty));
        assert_eq!(TenantId::parse("Acme"), Err(IdError::BadCharacter));
        assert_eq!(TenantId::parse("-acme"), Err(IdError::BadCharacter));
        assert_eq!(TenantId::parse("a/b"), Err(IdError::BadCharacter));
        assert_eq!(TenantId::parse("é"), Err(IdError::BadCharacter));
        assert_eq!(TenantId::parse(&"a".repeat(64)), Err(IdError::TooLong));
        assert!(TenantId::parse(&"a".repeat(63)).is_ok());
        assert!(serde_json::from_str::<TenantId>("\"Bad Id\"").is_err());
        let generated = TenantId::generate();
        assert!(TenantId::parse(generated.as_str()).is_ok());
    }

    #[test]
    fn the_original_plans_collisions_do_not_collide_here() {
        let pairs = [
            ("a-b", "c"),
            ("a_b", "c"),
            ("a", "b_c"),
            ("a", "b-c"),
            ("a_b_c", "default"),
        ];
        let mut seen = HashMap::new();
        for (tenant, db) in pairs {
            let name = collection_name("tenantry", &t(tenant), &d(db));
            if let Some(previous) = seen.insert(name.clone(), (tenant, db)) {
                panic!(
                    "{name} produced by both {previous:?} and {:?}",
                    (tenant, db)
                );
            }
        }
    }

    /// Exhaustive over a small alphabet that contains every separator we use: every
    /// (tenant, database) pair of length ≤ 3 maps to a distinct collection name.
    #[test]
    fn collection_names_are_injective_over_small_ids() {
        let alphabet = ['a', '1', '_', '-'];
        let mut ids = Vec::new();
        for len in 1..=3 {
            let mut idx = vec![0usize; len];
            loop {
                let s: String = idx.iter().map(|&i| alphabet[i]).collect();
                if TenantId::parse(&s).is_ok() {
                    ids.push(s);
                }
                let mut k = 0;
                loop {
                    if k == len {
                        break;
                    }
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == len {
                    break;
                }
            }
        }
        let mut seen: HashMap<String, (String, String)> = HashMap::new();
        for tenant in &ids {
            for db in &ids {
                let name = collection_name("f_c1_x", &t(tenant), &d(db));
                assert!(
                    seen.insert(name.clone(), (tenant.clone(), db.clone()))
                        .is_none(),
                    "collision on {name}"
                );
                let shared = partition_collection_name("f_c1_x", &d(db));
                assert!(
                    !seen.contains_key(&shared),
                    "partition name {shared} meets a collection name"
                );
            }
        }
        assert!(seen.len() > 1000);
    }

    #[test]
    fn fleets_do_not_meet() {
        let a = collection_name("x", &t("c1"), &d("y"));
        let b = collection_name("x_c1_c1", &t("y"), &d("y"));
        assert_ne!(a, b);
    }

    #[test]
    fn namespace_modes() {
        let c = Namespace::new(
            "tenantry",
            &t("acme"),
            &d("default"),
            IsolationMode::Collection,
        );
        let p = Namespace::new(
            "tenantry",
            &t("acme"),
            &d("default"),
            IsolationMode::Partition,
        );
        assert_eq!(c.collection, "f8_tenantry_c4_acme_default");
        assert_eq!(p.collection, "f8_tenantry_p_default");
        assert!(p.is_shared() && !c.is_shared());
    }

    #[test]
    fn point_ids_are_deterministic_and_distinct() {
        let doc = Uuid::from_u128(7);
        let a = point_id(&t("acme"), doc, 0, "hash-256");
        assert_eq!(a, point_id(&t("acme"), doc, 0, "hash-256"));
        assert_ne!(a, point_id(&t("acme"), doc, 1, "hash-256"));
        assert_ne!(a, point_id(&t("acme2"), doc, 0, "hash-256"));
        assert_ne!(a, point_id(&t("acme"), doc, 0, "hash-384"));
        assert_ne!(a, point_id(&t("acme"), Uuid::from_u128(8), 0, "hash-256"));
    }

    /// The inverse of [`collection_name`] and [`partition_collection_name`]: reads a name
    /// back into (fleet component, tenant, database) or (fleet component, database). That
    /// every generated name decodes to exactly what made it is the proof of injectivity:
    /// two pairs with one name would have to decode to both.
    enum Decoded {
        Collection(String, String, String),
        Partition(String, String),
    }

    fn decode(name: &str) -> Decoded {
        let (marker, rest) = name.split_at(1);
        assert!(marker == "f" || marker == "h", "{name}");
        let (digits, rest) = rest.split_once('_').expect("fleet length");
        let len: usize = digits.parse().expect("fleet length is a number");
        let fleet = name[..1 + digits.len() + 1 + len].to_owned();
        let rest = &rest[len..];
        if let Some(db) = rest.strip_prefix("_p_") {
            return Decoded::Partition(fleet, db.to_owned());
        }
        let rest = rest.strip_prefix("_c").expect("collection marker");
        let (len, rest) = rest.split_once('_').expect("tenant length");
        let len: usize = len.parse().expect("tenant length is a number");
        let tenant = &rest[..len];
        let db = rest[len..].strip_prefix('_').expect("database separator");
        Decoded::Collection(fleet, tenant.to_owned(), db.to_owned())
    }

    /// Deterministic xorshift, so a failure reproduces (no extra dependency).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A valid id built to confuse a naming scheme: separators, markers and digits that
    /// look like length prefixes, fragments of real encoded names, up to the maximum length.
    fn adversarial_id(rng: &mut Rng) -> String {
        const FRAGMENTS: [&str; 12] = [
            "_",
            "-",
            "c",
            "p",
            "f",
            "_c",
            "_p_",
            "c1_",
            "_c4_acme_",
            "f8_tenantry",
            "0",
            "12_",
        ];
        const FIRST: [char; 6] = ['a', 'c', 'p', 'f', '1', '9'];
        let mut id = FIRST[rng.below(FIRST.len())].to_string();
        let target = 1 + rng.below(MAX_ID_LEN);
        while id.len() < target {
            id.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
        id.truncate(target);
        id
    }

    #[test]
    fn adversarial_ids_decode_back_to_exactly_their_pair() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let fleets = ["tenantry", "f_c1_x", "a.b", "a-b", "x_p_y"];
        let mut seen: HashMap<String, (String, String, String)> = HashMap::new();
        for round in 0..20_000 {
            let fleet = fleets[round % fleets.len()];
            let tenant = adversarial_id(&mut rng);
            let db = adversarial_id(&mut rng);
            let (t_id, d_id) = (t(&tenant), d(&db));
            let name = collection_name(fleet, &t_id, &d_id);
            match decode(&name) {
                Decoded::Collection(f, dt, dd) => {
                    assert_eq!(
                        (dt.as_str(), dd.as_str()),
                        (tenant.as_str(), db.as_str()),
                        "{name}"
                    );
                    assert_eq!(f, fleet_component(fleet), "{name}");
                }
                Decoded::Partition(..) => panic!("{name} decodes as a partition name"),
            }
            if let Some(previous) =
                seen.insert(name.clone(), (fleet.into(), tenant.clone(), db.clone()))
            {
                assert_eq!(
                    previous,
                    (fleet.into(), tenant.clone(), db.clone()),
                    "collision on {name}"
                );
            }
            let shared = partition_collection_name(fleet, &d_id);
            match decode(&shared) {
                Decoded::Partition(f, dd) => {
                    assert_eq!(dd, db, "{shared}");
                    assert_eq!(f, fleet_component(fleet), "{shared}");
                }
                Decoded::Collection(..) => panic!("{shared} decodes as a collection name"),
            }
            // Qdrant's limit on collection names.
            assert!(name.len() <= 255 && shared.len() <= 255, "{name}");
        }
    }

    #[test]
    fn fleets_that_differ_only_in_dots_do_not_meet() {
        let (a, b) = (t("acme"), d("default"));
        assert_ne!(
            collection_name("a.b", &a, &b),
            collection_name("a-b", &a, &b)
        );
        assert_ne!(
            partition_collection_name("a.b", &b),
            partition_collection_name("a-b", &b)
        );
        // Plain prefixes keep the names they always had.
        assert_eq!(
            collection_name("tenantry", &a, &b),
            "f8_tenantry_c4_acme_default"
        );
    }

    #[test]
    fn point_ids_do_not_collide_over_adversarial_inputs() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let models = ["hash-256", "hash-25", "6|hash-2", "m:1", "m", ""];
        let mut seen: HashMap<Uuid, (String, u128, u32, String)> = HashMap::new();
        for _ in 0..20_000 {
            let tenant = adversarial_id(&mut rng);
            let document = Uuid::from_u128(u128::from(rng.next() % 4));
            let chunk = (rng.next() % 4) as u32;
            let model = models[rng.below(models.len())];
            let id = point_id(&t(&tenant), document, chunk, model);
            let input = (tenant, document.as_u128(), chunk, model.to_owned());
            if let Some(previous) = seen.insert(id, input.clone()) {
                assert_eq!(previous, input, "point id collision");
            }
        }
    }
}
