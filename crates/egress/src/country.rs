//! Country lookups in a MaxMind-format (MMDB) database, such as GeoIP2 or
//! GeoLite2 Country or City.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader};

use crate::error::EgressError;

/// An open country database.
pub struct CountryDb {
    path: PathBuf,
    reader: Reader<Vec<u8>>,
}

impl std::fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountryDb").field("path", &self.path).finish_non_exhaustive()
    }
}

impl CountryDb {
    /// Reads the database at `path` into memory. Fails if the file is not a
    /// MaxMind DB or its type has no country data (the database type must
    /// contain `Country`, `City` or `Enterprise`).
    pub fn open(path: &Path) -> Result<Self, EgressError> {
        let failed = |message: String| EgressError::CountryDatabase { path: path.to_owned(), message };

        let reader = Reader::open_readfile(path).map_err(|error| failed(error.to_string()))?;
        let kind = reader.metadata().database_type.clone();
        if !["Country", "City", "Enterprise"].iter().any(|k| kind.contains(k)) {
            return Err(failed(format!(
                "database type {kind:?} has no country data; use a GeoIP2 or GeoLite2 Country or City database"
            )));
        }
        Ok(Self { path: path.to_owned(), reader })
    }

    /// Returns the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks up the ISO 3166-1 alpha-2 code of the country where `ip` is
    /// located (`country.iso_code`), falling back to the country where its
    /// network is registered (`registered_country.iso_code`). Returns
    /// `Ok(None)` for an address the database does not cover.
    pub fn country(&self, ip: IpAddr) -> Result<Option<String>, String> {
        let result = self.reader.lookup(ip).map_err(|error| error.to_string())?;
        for field in ["country", "registered_country"] {
            let path = [PathElement::Key(field), PathElement::Key("iso_code")];
            let code: Option<String> = result.decode_path(&path).map_err(|error| error.to_string())?;
            if let Some(code) = code {
                return Ok(Some(code));
            }
        }
        Ok(None)
    }
}
