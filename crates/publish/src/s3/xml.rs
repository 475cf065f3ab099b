//! The few S3 XML documents the uploader reads and writes.

use serde::Deserialize;

/// `<Error><Code/><Message/></Error>`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ErrorDoc {
    pub code: String,
    pub message: String,
}

/// `<InitiateMultipartUploadResult>`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct InitiateDoc {
    pub upload_id: String,
}

/// `<ListMultipartUploadsResult>`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListUploadsDoc {
    #[serde(rename = "Upload")]
    pub uploads: Vec<UploadDoc>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// One `<Upload>` of a listing.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct UploadDoc {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<String>,
}

/// The name of the document's root element (skipping the XML declaration and whitespace).
pub(crate) fn root_name(xml: &str) -> Option<&str> {
    let mut rest = xml;
    loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            continue;
        }
        let end = rest.find(|c: char| c == '>' || c == '/' || c.is_whitespace())?;
        return Some(&rest[..end]);
    }
}

/// Escapes text for an XML element body (ETags contain quotes).
pub(crate) fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// The `CompleteMultipartUpload` request body for `(part number, etag)` pairs in order.
pub(crate) fn complete_body(parts: &[(u32, String)]) -> String {
    let mut body = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        body.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
            escape(etag)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_and_initiate_documents() {
        let err: ErrorDoc = quick_xml::de::from_str(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message><RequestId>1</RequestId></Error>"#,
        )
        .unwrap();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        let init: InitiateDoc = quick_xml::de::from_str(
            "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>abc-1</UploadId></InitiateMultipartUploadResult>",
        )
        .unwrap();
        assert_eq!(init.upload_id, "abc-1");
    }

    #[test]
    fn reads_upload_listings_with_zero_one_and_many_uploads() {
        let none: ListUploadsDoc = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(none.uploads.is_empty());
        let two: ListUploadsDoc = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><Upload><Key>a</Key><UploadId>1</UploadId></Upload>\
             <Upload><Key>b</Key><UploadId>2</UploadId><Initiated>2026-01-01T00:00:00Z</Initiated></Upload>\
             <IsTruncated>true</IsTruncated><NextKeyMarker>b</NextKeyMarker></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert_eq!(two.uploads.len(), 2);
        assert_eq!(two.uploads[1].upload_id, "2");
        assert!(two.is_truncated);
        assert_eq!(two.next_key_marker.as_deref(), Some("b"));
    }

    #[test]
    fn finds_the_root_element() {
        assert_eq!(
            root_name("<?xml version=\"1.0\"?>\n  <Error><Code/></Error>"),
            Some("Error")
        );
        assert_eq!(
            root_name("<CompleteMultipartUploadResult xmlns=\"x\">"),
            Some("CompleteMultipartUploadResult")
        );
        assert_eq!(root_name("   "), None);
        assert_eq!(root_name("<"), None);
    }

    #[test]
    fn complete_body_escapes_etags() {
        let body = complete_body(&[(1, "\"abc\"".into()), (2, "\"d<e\"".into())]);
        assert_eq!(
            body,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&quot;d&lt;e&quot;</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
