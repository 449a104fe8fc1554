-- Orthanc as the engine's DICOM-only VNA: take the patient changes (A08, A40) the engine re-sends.
--
-- The engine forwards a patient change to a VNA that takes DICOM only by sending the study's
-- instances again with the corrected Patient Module attributes (PS3.3 C.7.1.1).  Orthanc
-- (1.10) needs three things to end up with one copy that names the patient anew:
--
-- * "OverwriteInstances": true, else it keeps the first copy of an instance it holds;
-- * for a new PatientID (a merge), the copy filed under the old PatientID removed: Orthanc files
--   an instance under its PatientID, so the re-sent copy would otherwise be a second instance
--   with the same SOP Instance UID (and storage commitment answers 0x0112 for it);
-- * for the same PatientID (new name, birth date, sex), the patient's main DICOM tags rebuilt
--   (what /studies, QIDO-RS and C-FIND answer): Orthanc keeps those of the first copy.
--
-- Configuration: "OverwriteInstances": true, "LuaScripts": ["/path/to/patient-updates.lua"].

function ReceivedInstanceFilter(dicom, origin, info)
  local found = ParseJson(RestApiPost('/tools/lookup', dicom.SOPInstanceUID))
  for _, item in ipairs(found) do
    if item['Type'] == 'Instance' then
      local patient = ParseJson(RestApiGet('/instances/' .. item['ID'] .. '/patient'))
      if patient['MainDicomTags']['PatientID'] ~= dicom.PatientID then
        RestApiDelete('/instances/' .. item['ID'])
      end
    end
  end
  return true
end

function OnStableStudy(studyId, tags, metadata)
  local study = ParseJson(RestApiGet('/studies/' .. studyId))
  RestApiPost('/patients/' .. study['ParentPatient'] .. '/reconstruct', '')
end
